"""The receipt-level train/validation/test split: one row per receipt, words in reading order, BIO tags.

Reading order is the order in which the sources number lines and words: the table's OCR numbers lines
top to bottom, and the SROIE reader numbers rows after clustering them on the vertical centre. Tags
are computed on the whole receipt before anything is dropped, so down-sampling never turns an
``I-X`` into the start of a new entity.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from receipt_pipeline.core import storage, word_table
from receipt_pipeline.core.errors import ExplainedError

SPLITS = ("train", "validation", "test")
STRATEGIES = ("random", "merchant", "recent")
Strategy = Literal["random", "merchant", "recent"]
UNKNOWN_MERCHANT = "unknown"
OUTSIDE = "O"
BOX_SCALE = 1000

# what SROIE's four fields are called in the table's vocabulary (see ../shared/docs/dynamo-schema.md)
DEFAULT_SROIE_LABELS = {"COMPANY": "MERCHANT_NAME", "ADDRESS": "ADDRESS_LINE", "DATE": "DATE", "TOTAL": "GRAND_TOTAL"}

SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # <source>/<image id>/<receipt id, five digits>
        ("source", pa.string()),
        ("source_split", pa.string()),
        ("image_id", pa.string()),
        ("receipt_id", pa.int64()),
        ("split", pa.string()),
        ("words", pa.list_(pa.string())),
        ("boxes", pa.list_(pa.list_(pa.int16(), 4))),  # x0, y0, x1, y1 in 0..1000, y down
        ("tags", pa.list_(pa.string())),
        ("line_ids", pa.list_(pa.int32())),
        # the field values the source states for the receipt (SROIE's entities), null where it states none
        ("reference_fields", pa.map_(pa.string(), pa.string())),
        # the receipt's MERCHANT_NAME words, normalised (see merchant_of); UNKNOWN_MERCHANT where none is labelled
        ("merchant", pa.string()),
        # when the receipt was added to its source (the table's timestamp_added, as stored); null for SROIE
        ("added_at", pa.string()),
    ]
)
LABELS_METADATA_KEY = b"receipt_pipeline.labels"
VERSION_METADATA_KEY = b"receipt_pipeline.content_hash"
# JSON: what each source looked like when read (word_table.SNAPSHOT_ATTR), source -> snapshot
SNAPSHOTS_METADATA_KEY = b"receipt_pipeline.source_snapshots"
# JSON: how the split was drawn and what it holds (SplitResult.record): what makes two reports comparable
RECORD_METADATA_KEY = b"receipt_pipeline.split_record"


class SplitError(ExplainedError, ValueError):
    """The split cannot be built from this input; the message names the receipts or settings at fault."""


@dataclass(frozen=True)
class SplitOptions:
    # random: a hash of each receipt's key; merchant: whole merchants held out of train; recent: the newest
    # table receipts (timestamp_added) to test, the next newest to validation
    strategy: Strategy = "random"
    seed: int = 42
    shares: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test
    pinned_validation: frozenset[str] = frozenset()
    pinned_test: frozenset[str] = frozenset()
    merchant_label: str = "MERCHANT_NAME"  # whose words name a receipt's merchant
    # train only; 0 (the default) turns it off. The earlier system's 0.7 shrinks an epoch's tokens about four-fold
    # and teaches the model that most words are entities: on SROIE it over-predicted (BENCHMARKS.md)
    entity_share_target: float = 0.0
    sroie_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SROIE_LABELS))

    def __post_init__(self) -> None:
        if len(self.shares) != 3 or min(self.shares) < 0 or not np.isclose(sum(self.shares), 1.0):
            raise SplitError(f"split shares must be three non-negative numbers summing to 1, got {self.shares}")
        if not 0 <= self.entity_share_target < 1:
            raise SplitError(f"entity_share_target must be in [0, 1), got {self.entity_share_target}")
        if self.strategy not in STRATEGIES:
            raise SplitError(f"split strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        both = sorted(self.pinned_validation & self.pinned_test)
        if both:
            raise SplitError(f"{len(both)} receipt keys are pinned to both validation and test, e.g. {both[:5]}")


@dataclass
class SplitResult:
    table: pa.Table
    labels: list[str]
    entity_share_before: float  # train, before down-sampling
    entity_share_after: float
    dropped_train_lines: int
    dropped_train_words: int
    pinned_missing: list[str]  # pinned validation or test keys that match no receipt
    data_version: str  # a hash of the rows and the label list
    record: dict = field(default_factory=dict)  # how it was drawn and what it holds: see split_record

    def receipts_per_split(self) -> dict[str, int]:
        counts = Counter(self.table.column("split").to_pylist())
        return {name: counts.get(name, 0) for name in SPLITS}

    def words_per_split(self) -> dict[str, int]:
        return {name: _words_in(self.table, name) for name in SPLITS}

    def label_counts_per_split(self) -> dict[str, Counter]:
        """Entity (B- tag) counts per label per split."""
        result = {}
        for name in SPLITS:
            tags = pc.list_flatten(_rows_of(self.table, name).column("tags")).to_numpy(zero_copy_only=False)
            begins = [tag[2:] for tag in tags if tag.startswith("B-")]
            result[name] = Counter(begins)
        return result


# ---------------------------------------------------------------------------------------------- pieces


def bio_tags(labels: Sequence[str | None]) -> list[str]:
    """``B-X`` on the first word of each run of label X, ``I-X`` on the rest of the run, ``O`` elsewhere."""
    tags = []
    previous = None
    for label in labels:
        if not label:
            tags.append(OUTSIDE)
        elif label == previous:
            tags.append(f"I-{label}")
        else:
            tags.append(f"B-{label}")
        previous = label or None
    return tags


def tag_names(labels: Sequence[str]) -> list[str]:
    """The model's classes: O, then B- and I- of every label, in label order."""
    return [OUTSIDE, *(f"{prefix}-{label}" for label in labels for prefix in ("B", "I"))]


def assign_split(key: str, seed: int, shares: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """A split from a hash of the key and the seed: stable across runs, machines and input order."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64
    if point < shares[0]:
        return "train"
    if point < shares[0] + shares[1]:
        return "validation"
    return "test"


def scale_boxes(x0, y0, x1, y1) -> np.ndarray:
    """0..1 coordinates (y down) to LayoutLM's 0..1000 integers, clipped and ordered, shape (n, 4)."""
    boxes = np.rint(np.column_stack([x0, y0, x1, y1]).astype(np.float64) * BOX_SCALE)
    boxes = np.clip(np.nan_to_num(boxes, nan=0.0), 0, BOX_SCALE).astype(np.int16)
    lower = np.minimum(boxes[:, [0, 1]], boxes[:, [2, 3]])
    upper = np.maximum(boxes[:, [0, 1]], boxes[:, [2, 3]])
    return np.column_stack([lower[:, 0], lower[:, 1], upper[:, 0], upper[:, 1]]).astype(np.int16)


def read_pinned_keys(uri: str) -> list[str]:
    """Receipt keys, one per line (blank lines and ``#`` comments ignored), from a local file or ``s3://``."""
    text = storage.read_bytes(uri).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# ------------------------------------------------------------------------------------------ the build


def build_split(words: Iterable[pd.DataFrame], options: SplitOptions | None = None) -> SplitResult:
    """The split from word tables (see :mod:`word_table`), one row per receipt."""
    options = options or SplitOptions()
    frames = [frame for frame in words if len(frame)]
    snapshots = {
        str(frame["source"].iloc[0]): frame.attrs[word_table.SNAPSHOT_ATTR]
        for frame in frames
        if word_table.SNAPSHOT_ATTR in frame.attrs
    }
    if not frames:
        raise SplitError("no words: every selected source is empty")
    references = {
        key: dict(fields) for f in frames for key, fields in f.attrs.get(word_table.REFERENCE_FIELDS_ATTR, {}).items()
    }
    receipt_added = {
        key: str(stamp) for f in frames for key, stamp in f.attrs.get(word_table.RECEIPT_ADDED_ATTR, {}).items()
    }
    frame = pd.concat(frames, ignore_index=True)
    frame = _map_sroie_labels(frame, options.sroie_labels)
    frame = frame.sort_values(["source", "image_id", "receipt_id", "line_id", "word_id"], kind="stable")
    frame = frame.reset_index(drop=True)

    keys = _receipt_keys(frame)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    receipt_keys = keys[starts]
    if len(set(receipt_keys)) != len(receipt_keys):
        raise SplitError("a receipt's words are not contiguous after sorting: duplicate receipt keys")
    tags = _bio_tags_vectorised(frame["label"], starts)
    boxes = scale_boxes(frame["x0"], frame["y0"], frame["x1"], frame["y1"])

    first = frame.iloc[starts]
    merchants = _merchants(frame, keys, receipt_keys, options.merchant_label)
    added = [receipt_added.get(key) for key in receipt_keys]
    splits = assign_splits(receipt_keys.tolist(), first["source_split"].fillna("").tolist(), merchants, added, options)
    split_of_word = np.repeat(np.asarray(splits), np.diff(np.r_[starts, len(frame)]))

    keep = np.ones(len(frame), dtype=bool)
    is_train = split_of_word == "train"
    line_ids = frame["line_id"].to_numpy(dtype=np.int64)
    before = _entity_share(tags[is_train])
    dropped_lines = 0
    if options.entity_share_target > 0 and is_train.any():
        keep, dropped_lines = _downsample_outside_lines(keys, line_ids, tags, is_train, options)
    after = _entity_share(tags[is_train & keep])

    per_receipt = {
        "merchant": dict(zip(receipt_keys, merchants, strict=True)),
        "added_at": dict(zip(receipt_keys, added, strict=True)),
    }
    table = _receipt_table(frame, keys, tags, boxes, line_ids, split_of_word, keep, references, per_receipt)
    labels = sorted(frame["label"].dropna().unique().tolist())
    table = table.replace_schema_metadata({LABELS_METADATA_KEY: ",".join(labels).encode()})
    version = content_hash(table)
    record = split_record(table, labels, options)
    table = table.replace_schema_metadata(
        {
            **table.schema.metadata,
            VERSION_METADATA_KEY: version.encode(),
            SNAPSHOTS_METADATA_KEY: json.dumps(snapshots, sort_keys=True).encode(),
            RECORD_METADATA_KEY: json.dumps(record, sort_keys=True).encode(),
        }
    )
    pinned_missing = sorted((options.pinned_validation | options.pinned_test) - set(receipt_keys))
    return SplitResult(
        table=table,
        labels=labels,
        entity_share_before=before,
        entity_share_after=after,
        dropped_train_lines=dropped_lines,
        dropped_train_words=int((~keep).sum()),
        pinned_missing=pinned_missing,
        data_version=version,
        record=record,
    )


def labels_of(schema_metadata: Mapping[bytes, bytes] | None) -> list[str]:
    """The label list a split was built with, from its schema metadata."""
    raw = (schema_metadata or {}).get(LABELS_METADATA_KEY)
    if raw is None:
        raise SplitError("this table carries no label list: it was not written by build_split")
    return [label for label in raw.decode().split(",") if label]


def source_snapshots_of(schema_metadata: Mapping[bytes, bytes] | None) -> dict[str, dict]:
    """What each source looked like when the split's words were read (empty for a split without any)."""
    raw = (schema_metadata or {}).get(SNAPSHOTS_METADATA_KEY)
    return json.loads(raw) if raw else {}


def record_of(schema_metadata: Mapping[bytes, bytes] | None) -> dict:
    """How the split was drawn and what it holds (:func:`split_record`); empty for a split written before records."""
    raw = (schema_metadata or {}).get(RECORD_METADATA_KEY)
    return json.loads(raw) if raw else {}


def version_of(schema_metadata: Mapping[bytes, bytes] | None) -> str:
    raw = (schema_metadata or {}).get(VERSION_METADATA_KEY)
    if raw is None:
        raise SplitError("this table carries no content hash: it was not written by build_split")
    return raw.decode()


def _map_sroie_labels(frame: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
    is_sroie = frame["source"] == word_table.SOURCE_SROIE
    if not is_sroie.any() or not mapping:
        return frame
    frame = frame.copy()
    frame.loc[is_sroie, "label"] = frame.loc[is_sroie, "label"].replace(dict(mapping))
    return frame


def _fields_of(fields: Mapping[str, str] | None) -> list[tuple[str, str]] | None:
    return sorted(fields.items()) if fields else None


def reference_fields(table: pa.Table) -> dict[str, dict[str, str]]:
    """Receipt key -> field -> the value its source states, for the receipts of ``table`` that have some."""
    keys = table.column("key").to_pylist()
    return {
        key: dict(fields)
        for key, fields in zip(keys, table.column("reference_fields").to_pylist(), strict=True)
        if fields
    }


def _receipt_keys(frame: pd.DataFrame) -> np.ndarray:
    receipt = frame["receipt_id"].astype("int64").map("{:05d}".format)
    return (frame["source"].astype(str) + "/" + frame["image_id"].astype(str) + "/" + receipt).to_numpy(dtype=object)


def normalised_merchant(text: str) -> str:
    """A merchant name as receipts of one merchant share it: upper case, letters and digits, single spaces."""
    return " ".join(re.sub(r"[^0-9A-Z]+", " ", text.upper()).split()) or UNKNOWN_MERCHANT


def _merchants(frame: pd.DataFrame, keys: np.ndarray, receipt_keys: np.ndarray, label: str) -> list[str]:
    is_merchant = (frame["label"] == label).fillna(False).to_numpy(dtype=bool)
    words = pd.Series(frame["text"].to_numpy(dtype=object)[is_merchant]).astype(str)
    names = words.groupby(keys[is_merchant], sort=False).agg(" ".join)
    return [normalised_merchant(names[key]) if key in names.index else UNKNOWN_MERCHANT for key in receipt_keys]


def _point(name: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    keys: Sequence[str],
    source_splits: Sequence[str],
    merchants: Sequence[str],
    added: Sequence[str | None],
    options: SplitOptions,
) -> list[str]:
    """Each receipt's split. A source's own test receipts (SROIE's) and pinned keys first, then the strategy
    for the rest: ``random`` hashes each key; ``merchant`` takes whole merchants, in a seeded order, into test
    until it holds its share of receipts, then into validation, the rest to train; ``recent`` puts the newest
    dated receipts in test and the next newest in validation, and hashes the undated ones (SROIE's)."""
    splits: list[str | None] = [None] * len(keys)
    free = []
    for index, (key, source_split) in enumerate(zip(keys, source_splits, strict=True)):
        if source_split == "test" or key in options.pinned_test:
            splits[index] = "test"  # a source's own test receipts are never trained or tuned on
        elif key in options.pinned_validation:
            splits[index] = "validation"
        else:
            free.append(index)
    _, validation_share, test_share = options.shares
    if options.strategy == "merchant":
        sizes = Counter(merchants[i] for i in free)
        order = sorted(sizes, key=lambda name: (_point(f"merchant:{name}", options.seed), name))
        quota = {"test": test_share * len(free), "validation": validation_share * len(free)}
        filled = dict.fromkeys(quota, 0)
        split_of_merchant = {}
        for name in order:
            target = next((split for split in quota if filled[split] < quota[split]), "train")
            split_of_merchant[name] = target
            if target in filled:
                filled[target] += sizes[name]
        for i in free:
            splits[i] = split_of_merchant[merchants[i]]
    elif options.strategy == "recent":
        dated = [i for i in free if np.isfinite(word_table.sortable_time(added[i]))]
        newest_first = sorted(dated, key=lambda i: (-word_table.sortable_time(added[i]), keys[i]))
        tests = round(test_share * len(dated))
        validations = round(validation_share * len(dated))
        for rank, i in enumerate(newest_first):
            splits[i] = "test" if rank < tests else "validation" if rank < tests + validations else "train"
        undated = set(free) - set(dated)
        for i in undated:
            splits[i] = assign_split(keys[i], options.seed, options.shares)
    else:
        for i in free:
            splits[i] = assign_split(keys[i], options.seed, options.shares)
    return splits  # type: ignore[return-value]


def keys_digest(keys: Iterable[str]) -> str:
    """A hash of a set of receipt keys, independent of their order: equal exactly when the sets are."""
    return hashlib.sha256("\n".join(sorted(set(keys))).encode()).hexdigest()[:24]


def recent_since(added: Iterable[str | None], share: float) -> str | None:
    """The time from which the newest ``share`` of the dated receipts were added: the report's recent slice
    holds the receipts the ``recent`` strategy would test on, whatever strategy drew the split."""
    stamps = sorted((s for s in added if s and np.isfinite(word_table.sortable_time(s))), key=word_table.sortable_time)
    if not stamps:
        return None
    count = max(1, round(share * len(stamps)))
    return stamps[-count]


def split_record(table: pa.Table, labels: Sequence[str], options: SplitOptions) -> dict:
    """How the split was drawn and what it holds: the strategy and its settings, the label set, a hash of each
    split's keys (two reports are on the same receipts exactly when their test hashes are equal), and how many
    receipts and merchants each split holds, with the test merchants also seen in train."""
    keys = table.column("key").to_pylist()
    splits = table.column("split").to_pylist()
    merchants = table.column("merchant").to_pylist()
    by_split = {name: [k for k, s in zip(keys, splits, strict=True) if s == name] for name in SPLITS}
    merchants_of = {
        name: {m for m, s in zip(merchants, splits, strict=True) if s == name and m != UNKNOWN_MERCHANT}
        for name in SPLITS
    }
    added = table.column("added_at").to_pylist()
    return {
        "strategy": options.strategy,
        "seed": options.seed,
        "shares": list(options.shares),
        "labels": list(labels),
        "merchant_label": options.merchant_label,
        "pinned_validation": len(options.pinned_validation),
        "pinned_test": len(options.pinned_test),
        "keys_sha256": {name: keys_digest(by_split[name]) for name in SPLITS},
        "receipts": {name: len(by_split[name]) for name in SPLITS},
        "merchants": {name: len(merchants_of[name]) for name in SPLITS},
        "test_merchants_seen_in_train": len(merchants_of["test"] & merchants_of["train"]),
        "recent_since": recent_since(added, options.shares[2]),
        "receipts_without_added_at": sum(stamp is None for stamp in added),
    }


def _bio_tags_vectorised(labels: pd.Series, receipt_starts: np.ndarray) -> np.ndarray:
    codes, names = pd.factorize(labels, use_na_sentinel=True)  # -1 for no label
    starts_run = np.ones(len(codes), dtype=bool)
    starts_run[1:] = codes[1:] != codes[:-1]
    starts_run[receipt_starts] = True
    names = np.asarray(names, dtype=object)
    tags = np.full(len(codes), OUTSIDE, dtype=object)
    labelled = codes >= 0
    begin = labelled & starts_run
    inside = labelled & ~starts_run
    tags[begin] = "B-" + names[codes[begin]].astype(str)
    tags[inside] = "I-" + names[codes[inside]].astype(str)
    return tags


def _entity_share(tags: np.ndarray) -> float:
    return float((tags != OUTSIDE).mean()) if len(tags) else 0.0


def _downsample_outside_lines(
    keys: np.ndarray, line_ids: np.ndarray, tags: np.ndarray, is_train: np.ndarray, options: SplitOptions
) -> tuple[np.ndarray, int]:
    """Drop whole train lines with no entity word, chosen at random (seeded), until entity words make
    ``entity_share_target`` of train words or no such line is left."""
    target = options.entity_share_target
    entity = tags != OUTSIDE
    entities = int((entity & is_train).sum())
    outside = int((~entity & is_train).sum())
    budget = entities * (1 - target) / target  # outside words that may stay
    keep = np.ones(len(tags), dtype=bool)
    if outside <= budget:
        return keep, 0

    line_frame = pd.DataFrame({"key": keys, "line": line_ids, "entity": entity, "train": is_train})
    line_frame = line_frame[line_frame["train"]]
    per_line = line_frame.groupby(["key", "line"], sort=True)["entity"].agg(["sum", "size"])
    outside_lines = per_line[per_line["sum"] == 0]
    mixed_outside = outside - int(outside_lines["size"].sum())  # outside words on lines that stay anyway
    room = budget - mixed_outside
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(outside_lines))
    sizes = outside_lines["size"].to_numpy()[order]
    kept = np.cumsum(sizes) <= max(room, 0)
    dropped = outside_lines.index[order[~kept]]
    if len(dropped):
        dropped_index = pd.MultiIndex.from_tuples(list(dropped), names=["key", "line"])
        word_index = pd.MultiIndex.from_arrays([keys, line_ids], names=["key", "line"])
        keep = ~(word_index.isin(dropped_index) & is_train)
    return keep, len(dropped)


def _receipt_table(
    frame: pd.DataFrame,
    keys: np.ndarray,
    tags: np.ndarray,
    boxes: np.ndarray,
    line_ids: np.ndarray,
    split_of_word: np.ndarray,
    keep: np.ndarray,
    references: Mapping[str, Mapping[str, str]],
    per_receipt: Mapping[str, Mapping[str, str | None]],
) -> pa.Table:
    keys, tags, boxes, line_ids, split_of_word = (
        keys[keep],
        tags[keep],
        boxes[keep],
        line_ids[keep],
        split_of_word[keep],
    )
    kept = frame[keep]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.array([], dtype=np.int64)
    offsets = pa.array(np.r_[starts, len(keys)].astype(np.int32))
    first = kept.iloc[starts]
    flat_boxes = pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1), pa.int16()), 4)
    columns = {
        "key": pa.array(keys[starts].tolist(), pa.string()),
        "source": pa.array(first["source"].astype(str).tolist(), pa.string()),
        "source_split": pa.array(first["source_split"].astype(object).where(first["source_split"].notna(), None)),
        "image_id": pa.array(first["image_id"].astype(str).tolist(), pa.string()),
        "receipt_id": pa.array(first["receipt_id"].to_numpy(dtype=np.int64)),
        "split": pa.array(split_of_word[starts].tolist(), pa.string()),
        "words": pa.ListArray.from_arrays(offsets, pa.array(kept["text"].astype(str).tolist(), pa.string())),
        "boxes": pa.ListArray.from_arrays(offsets, flat_boxes),
        "tags": pa.ListArray.from_arrays(offsets, pa.array(tags.tolist(), pa.string())),
        "line_ids": pa.ListArray.from_arrays(offsets, pa.array(line_ids.astype(np.int32))),
        "reference_fields": pa.array(
            [_fields_of(references.get(key)) for key in keys[starts].tolist()], pa.map_(pa.string(), pa.string())
        ),
        **{
            name: pa.array([values.get(key) for key in keys[starts].tolist()], pa.string())
            for name, values in per_receipt.items()
        },
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


# ------------------------------------------------------------------------------------------ the checks


def _rows_of(table: pa.Table, split: str) -> pa.Table:
    return table.filter(pc.equal(table.column("split"), split))


def _words_in(table: pa.Table, split: str) -> int:
    return int(pc.sum(pc.list_value_length(_rows_of(table, split).column("words"))).as_py() or 0)


def receipts_in_two_splits(table: pa.Table) -> list[str]:
    """Receipt keys that appear in more than one split (a leak), or twice in one."""
    counts = Counter(table.column("key").to_pylist())
    return sorted(key for key, count in counts.items() if count > 1)


def empty_splits(table: pa.Table) -> list[str]:
    present = set(table.column("split").to_pylist())
    return [name for name in SPLITS if name not in present]


def labels_unseen_in_train(table: pa.Table) -> list[str]:
    def labels_in(split: str) -> set[str]:
        tags = pc.list_flatten(_rows_of(table, split).column("tags")).to_pylist()
        return {tag[2:] for tag in tags if tag != OUTSIDE}

    return sorted(labels_in("validation") - labels_in("train"))


def boxes_out_of_range(table: pa.Table, limit: int = 20) -> list[str]:
    """``key#word`` of every box outside 0..1000 or with x0 > x1 or y0 > y1 (the first ``limit``)."""
    flat = pc.list_flatten(table.column("boxes"))
    values = pc.list_flatten(flat).to_numpy(zero_copy_only=False).reshape(-1, 4).astype(np.int64)
    bad = (
        (values < 0).any(axis=1)
        | (values > BOX_SCALE).any(axis=1)
        | (values[:, 0] > values[:, 2])
        | (values[:, 1] > values[:, 3])
    )
    if not bad.any():
        return []
    lengths = pc.list_value_length(table.column("boxes")).to_numpy(zero_copy_only=False)
    receipt_of = np.repeat(np.arange(len(lengths)), lengths)
    word_of = np.arange(len(values)) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    keys = table.column("key").to_pylist()
    return [f"{keys[receipt_of[i]]}#{word_of[i]}" for i in np.flatnonzero(bad)[:limit]]


def content_hash(table: pa.Table) -> str:
    """A hash of the rows and the label list, independent of how the table is chunked."""
    sink = io.BytesIO()
    combined = table.combine_chunks()
    with pa.ipc.new_stream(sink, combined.schema) as writer:
        writer.write_table(combined)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:24]
