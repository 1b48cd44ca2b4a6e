"""The word table that both source assets produce: one row per word, boxes 0..1 with y pointing down."""

from __future__ import annotations

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


def to_frame(columns: Mapping[str, Sequence]) -> pd.DataFrame:
    """A word table from column lists, with the canonical column order and types."""
    missing = set(COLUMNS) - set(columns)
    if missing:
        raise ValueError(f"word table is missing columns: {sorted(missing)}")
    table = pa.Table.from_pydict({name: list(columns[name]) for name in COLUMNS}, schema=SCHEMA)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)


def empty_frame() -> pd.DataFrame:
    return to_frame({name: [] for name in COLUMNS})


def column_schema_markdown() -> str:
    rows = "\n".join(f"| `{field.name}` | `{field.type}` |" for field in SCHEMA)
    return "| column | type |\n|---|---|\n" + rows
