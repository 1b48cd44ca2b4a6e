"""The word table that both source assets produce: one row per word, boxes 0..1 with y pointing down."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

import pandas as pd
import pyarrow as pa

SOURCE_DYNAMO = "dynamo"
SOURCE_SROIE = "sroie"

# column -> arrow type; the parquet schema of both source assets
SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # SOURCE_DYNAMO | SOURCE_SROIE
        ("source_split", pa.string()),  # the source's own split (SROIE train/test); null for the table
        ("image_id", pa.string()),
        ("receipt_id", pa.int64()),
        ("line_id", pa.int64()),
        ("word_id", pa.int64()),
        ("text", pa.string()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("confidence", pa.float64()),  # NaN where the source has none
        ("labels", pa.list_(pa.string())),  # every accepted label, before merges
        ("label", pa.string()),  # the label used, after merges and allowlist; null for none
    ]
)
COLUMNS = SCHEMA.names
ORDER = ["source", "image_id", "receipt_id", "line_id", "word_id"]
# DataFrame.attrs key (kept in the parquet file by pandas) for what the source looked like when it was
# read, e.g. the table's VALID label count and newest label: the split and the checkpoint pass it on
SNAPSHOT_ATTR = "source_snapshot"
# DataFrame.attrs key for the field values a source states for its receipts (SROIE's entity strings):
# receipt key -> field -> the string, carried on by the split to the evaluation, which scores against them
REFERENCE_FIELDS_ATTR = "reference_fields"
# DataFrame.attrs key for when each receipt was added to its source (the table's RECEIPT timestamp_added):
# receipt key -> ISO 8601 as stored; the split's `recent` strategy and the report's recent slice read it
RECEIPT_ADDED_ATTR = "receipt_added"


def receipt_key(source: str, image_id: str, receipt_id: int) -> str:
    """``<source>/<image id>/<receipt id, five digits>``: how the split and everything after it names a receipt."""
    return f"{source}/{image_id}/{int(receipt_id):05d}"


def to_frame(columns: Mapping[str, Sequence]) -> pd.DataFrame:
    """A word table from column lists, with the canonical column order and types."""
    missing = set(COLUMNS) - set(columns)
    if missing:
        raise ValueError(f"word table is missing columns: {sorted(missing)}")
    table = pa.Table.from_pydict({name: list(columns[name]) for name in COLUMNS}, schema=SCHEMA)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)


def empty_frame() -> pd.DataFrame:
    return to_frame({name: [] for name in COLUMNS})


def content_hash(frame: pd.DataFrame) -> str:
    """A hash of the rows, independent of their order: the data version of a source asset."""
    rows = frame.sort_values(ORDER, kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(rows[COLUMNS], schema=SCHEMA, preserve_index=False).replace_schema_metadata()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()[:24]


def sortable_time(timestamp: str | None) -> float:
    """Seconds since the epoch of an ISO 8601 time, a time without an offset read as UTC; -inf if unreadable
    (the table mixes forms: with and without an offset or microseconds)."""
    try:
        moment = dt.datetime.fromisoformat(timestamp)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return float("-inf")
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
