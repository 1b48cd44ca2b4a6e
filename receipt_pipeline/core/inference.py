"""The production model run over receipts that nobody labelled: a label and a confidence per word, the
receipt's fields (merchant, address, phone, date, time, total and the other receipt-level amounts) normalised
(:mod:`fields`, each source's date order), and its line items (:mod:`line_items`), checked against its subtotal.

Words come in as a word table (:mod:`word_table`: the table's receipts read by
``dynamo_reader.read_receipts_to_predict``, or SROIE's), are cut into the windows training cut
(:func:`windows.write_windows`, with the model's own tokenizer and tag list) and predicted in batches; each
word keeps the prediction of the window in which it sits furthest from an edge
(:func:`windows.merge_word_predictions`), with that prediction's softmax probability as its confidence.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from receipt_pipeline.core import bio, fields, line_items, storage, word_table
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.fields import AMOUNT_FIELDS, FIELD_LABELS
from receipt_pipeline.core.receipt_values import DateOrder

# the fields a receipt's confidence (and so its place in the review queue) is read from
KEY_FIELDS = ("merchant", "address", "date", "total")
# fields whose words the receipts table gives beside the value, for a value that reads as none
READ_FIELDS = ("date", "time", "phone", *AMOUNT_FIELDS)
ITEM_COLUMNS = [
    "key", "item", "product", "quantity", "unit_price", "line_total", "quantity_text", "unit_price_text",
    "line_total_text", "confidence", "line_ids",
]  # fmt: skip
WORD_COLUMNS = [
    "key", "source", "image_id", "receipt_id", "line_id", "word_id", "text", "tag", "label", "confidence",
    "existing_labels",
]  # fmt: skip


class InferenceError(ExplainedError, RuntimeError):
    pass


@dataclass
class LoadedModel:
    source: str  # the folder or s3:// prefix asked for
    folder: Path  # its local copy
    model: Any
    tokenizer: Any
    labels: list[str]
    tags: list[str]
    version: str  # the checkpoint's version (its weights' sha256) as production.json names it, else computed
    manifest: dict | None  # production.json, where ``source`` is a production model's folder

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id


def load_model(source: str, device: str = "cpu") -> LoadedModel:
    """A production model's folder (or any checkpoint folder the pipeline wrote), local or ``s3://``, with its
    tokenizer; weights read from safetensors only."""
    from receipt_pipeline.core import base_model, promotion
    from receipt_pipeline.core.evaluation import checkpoint_folder, load_classifier
    from receipt_pipeline.core.training import weights_digest

    folder = checkpoint_folder(source)
    manifest = promotion.current_production(source)
    version = (manifest or {}).get("checkpoint", {}).get("version") or weights_digest(folder)
    # proposals name the model that made them: a version that is not these weights' would misname them
    if weights_digest(folder) != version:
        raise InferenceError(f"{source}: its weights are not those production.json names ({version})")
    label_map = json.loads((folder / "label_map.json").read_text())
    labels, tags = list(label_map["labels"]), bio.tag_names(label_map["labels"])
    model = load_classifier(str(folder)).to(device)
    predicted = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if predicted != tags:
        raise InferenceError(f"{source}: the model predicts {predicted}, its label_map.json says {tags}")
    tokenizer = base_model.load_tokenizer(str(folder))
    return LoadedModel(source, folder, model, tokenizer, labels, tags, version, manifest)


# ------------------------------------------------------------------------------------------ predicting


@dataclass
class Predictions:
    words: pd.DataFrame  # WORD_COLUMNS, in reading order
    receipts: pd.DataFrame  # one row per receipt: fields, confidences, review priority (see receipt_row)
    model_version: str
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITEM_COLUMNS))  # one row per item
    windows: int = 0
    seconds: float = 0.0
    labels_per_kind: Counter = field(default_factory=Counter)  # predicted label -> words

    @property
    def entity_words(self) -> int:
        return int(self.words["label"].notna().sum()) if len(self.words) else 0


def _receipts_of(words: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(receipt key, its words in reading order) per receipt: the order the sources number lines and words."""
    ordered = words.sort_values(["source", "image_id", "receipt_id", "line_id", "word_id"], kind="stable")
    return [
        (word_table.receipt_key(source, image_id, receipt_id), group)
        for (source, image_id, receipt_id), group in ordered.groupby(
            ["source", "image_id", "receipt_id"], sort=False, observed=True
        )
    ]


def _boxes(group: pd.DataFrame) -> np.ndarray:
    """A receipt's word boxes as training saw them: 0..1000, y down."""
    return bio.scale_boxes(*(group[name].to_numpy() for name in ("x0", "y0", "x1", "y1")))


def _window_rows(receipts: Sequence[tuple[str, pd.DataFrame]], boxes: Sequence[np.ndarray]) -> pa.Table:
    """The split's columns that :func:`windows.write_windows` reads, every receipt in ``test``, every tag O."""
    return pa.table(
        {
            "key": [key for key, _ in receipts],
            "split": ["test"] * len(receipts),
            "words": [group["text"].astype(str).tolist() for _, group in receipts],
            "boxes": pa.array([box.tolist() for box in boxes], type=pa.list_(pa.list_(pa.int16(), 4))),
            "tags": [[OUTSIDE] * len(group) for _, group in receipts],
        }
    )


def predict_words(
    loaded: LoadedModel,
    words: pd.DataFrame,
    *,
    batch_size: int = 32,
    chunk_receipts: int = 256,
    table_date_order: DateOrder = "MDY",
) -> Predictions:
    """A label (None for O) and confidence per word of ``words`` (a word table), and the fields and line items of
    each receipt; the table's dates are read in ``table_date_order``, SROIE's day first.

    Receipts go through in chunks of ``chunk_receipts``, so memory follows the chunk, not the table.
    """
    from receipt_pipeline.core.evaluation import predict_with_confidence, repair_bio, word_confidences
    from receipt_pipeline.core.windows import WindowOptions, WindowSet, merge_word_predictions, write_windows

    started = time.perf_counter()
    max_length = min(512, int(getattr(loaded.model.config, "max_position_embeddings", 512)))
    options = WindowOptions(max_length=max_length, stride=min(128, max_length // 4))
    receipts = _receipts_of(words)
    orders = fields.date_orders(table_date_order)
    word_rows: list[pd.DataFrame] = []
    receipt_rows: list[dict] = []
    items_rows: list[dict] = []
    windows_cut = 0
    with tempfile.TemporaryDirectory(prefix="receipt-predictions-") as scratch:
        for start in range(0, len(receipts), chunk_receipts):
            chunk = receipts[start : start + chunk_receipts]
            boxes = [_boxes(group) for _, group in chunk]
            folder = str(PurePosixPath(scratch) / f"chunk-{start:08d}")
            manifest, _ = write_windows(
                _window_rows(chunk, boxes).to_batches(), loaded.tokenizer, loaded.labels, folder, options
            )
            windows = WindowSet(manifest, "test")
            windows_cut += len(windows)
            ids, probabilities = predict_with_confidence(loaded.model, windows, loaded.pad_token_id, batch_size)
            merged = merge_word_predictions(windows, ids)
            sure = word_confidences(windows, probabilities)
            for (key, group), receipt_boxes in zip(chunk, boxes, strict=True):
                tag_ids = merged.get(key, np.full(len(group), -1))
                tags = repair_bio([loaded.tags[i] if i >= 0 else OUTSIDE for i in tag_ids.tolist()])
                confidence = sure.get(key, np.full(len(group), np.nan))
                word_rows.append(_word_frame(key, group, tags, confidence))
                order = fields.order_of(key, orders)
                row, items = read_receipt(key, group, tags, confidence, loaded.labels, order, receipt_boxes)
                receipt_rows.append(row)
                items_rows.extend(items)
            shutil.rmtree(folder, ignore_errors=True)
    predicted = pd.concat(word_rows, ignore_index=True) if word_rows else pd.DataFrame(columns=WORD_COLUMNS)
    table = with_review_priority(pd.DataFrame(receipt_rows, columns=receipt_columns()))
    labels = Counter(predicted["label"].dropna().tolist())
    return Predictions(
        predicted,
        table,
        loaded.version,
        pd.DataFrame(items_rows, columns=ITEM_COLUMNS),
        windows_cut,
        time.perf_counter() - started,
        labels,
    )


def _word_frame(key: str, group: pd.DataFrame, tags: list[str], confidence: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": key,
            "source": group["source"].astype(str).to_numpy(),
            "image_id": group["image_id"].astype(str).to_numpy(),
            "receipt_id": group["receipt_id"].astype(np.int64).to_numpy(),
            "line_id": group["line_id"].astype(np.int64).to_numpy(),
            "word_id": group["word_id"].astype(np.int64).to_numpy(),
            "text": group["text"].astype(str).to_numpy(),
            "tag": tags,
            "label": [None if tag == OUTSIDE else tag[2:] for tag in tags],
            "confidence": np.asarray(confidence, dtype=np.float64),
            "existing_labels": [list(labels) for labels in group["labels"]],
        }
    )


# ------------------------------------------------------------------------------------------ fields


def receipt_columns() -> list[str]:
    columns = ["key", "source", "image_id", "receipt_id", "words", "entity_words", "mean_confidence", "confidence"]
    for name in FIELD_LABELS:
        columns += [name] + ([f"{name}_text"] if name in READ_FIELDS else [])
        columns.append(f"{name}_confidence")
    items = ["items", "items_sum", "items_check", "items_expected", "items_flagged"]
    return [*columns, *items, "review_priority"]


def receipt_row(
    key: str,
    group: pd.DataFrame,
    tags: Sequence[str],
    confidence: np.ndarray,
    labels: Sequence[str],
    order: DateOrder = "MDY",
    items: Sequence[line_items.LineItem] = (),
) -> dict:
    """One receipt's fields, each with its confidence: the lowest of the confidences of the words it is made
    of, a field no more certain than its least certain word. The receipt's confidence is the lowest of its key
    fields' (merchant, address, date, total, where the model has their labels), a field it found no word for
    counting 0: the review queue puts first what is least certain or missing. ``items`` (its line items) are
    counted and checked against the subtotal (line_items.check_items)."""
    words = group["text"].astype(str).tolist()
    read = fields.read_fields(words, list(tags), labels, order)
    sure = np.asarray(confidence, dtype=np.float64)
    present = sure[~np.isnan(sure)]
    row: dict[str, Any] = {
        "key": key,
        "source": str(group["source"].iloc[0]),
        "image_id": str(group["image_id"].iloc[0]),
        "receipt_id": int(group["receipt_id"].iloc[0]),
        "words": len(words),
        "entity_words": sum(tag != OUTSIDE for tag in tags),
        "mean_confidence": float(present.mean()) if len(present) else None,
    }
    key_confidences = []
    for name in FIELD_LABELS:
        reading = read.get(name)
        value = reading.value if reading else None
        scores = sure[reading.words] if reading and reading.words else np.zeros(0)
        field_confidence = float(np.nanmin(scores)) if len(scores) and not np.isnan(scores).all() else None
        row[name] = value
        if name in READ_FIELDS:
            row[f"{name}_text"] = (reading.text if reading else "") or None
        row[f"{name}_confidence"] = field_confidence
        if name in KEY_FIELDS and reading is not None:
            key_confidences.append(field_confidence if value is not None and field_confidence is not None else 0.0)
    row["confidence"] = min(key_confidences) if key_confidences else None
    check = line_items.check_items(
        items,
        {name: row[name] for name in ("subtotal", "total", "tax", "tip")},
        line_items.adjustment_amounts(words, list(tags)),
    )
    row.update(
        items=len(items),
        items_sum=check.items_sum,
        items_check=check.status,
        items_expected=f"{check.against} {check.expected}" if check.against else None,
        items_flagged=check.flagged,
    )
    return row


def read_receipt(
    key: str,
    group: pd.DataFrame,
    tags: Sequence[str],
    confidence: np.ndarray,
    labels: Sequence[str],
    order: DateOrder = "MDY",
    boxes: np.ndarray | None = None,
) -> tuple[dict, list[dict]]:
    """A receipt's row of the receipts table and its rows of the line-items table, read from its words' tags
    (``boxes``: its words' boxes as training saw them, computed from ``group`` when not given)."""
    items = line_items.assemble_items(
        group["text"].astype(str).tolist(),
        list(tags),
        _boxes(group) if boxes is None else boxes,
        group["line_id"].to_numpy(),
        confidence,
    )
    return receipt_row(key, group, tags, confidence, labels, order, items), item_rows(key, group, items)


def item_rows(key: str, group: pd.DataFrame, items: Sequence[line_items.LineItem]) -> list[dict]:
    """One row per line item of a receipt, with the OCR lines its words are on."""
    lines = group["line_id"].astype(np.int64).to_numpy()
    return [
        {
            "key": key,
            "item": number,
            **{name: getattr(item, name) for name in ITEM_COLUMNS[2:-1]},
            "line_ids": sorted({int(lines[index]) for index in item.words}),
        }
        for number, item in enumerate(items, start=1)
    ]


def with_review_priority(receipts: pd.DataFrame) -> pd.DataFrame:
    """The receipts, numbered 1, 2, ... in ``review_priority``: those whose line totals do not add up first (a
    misread amount or a missed item), then the least confident first."""
    if not len(receipts):
        return receipts.assign(review_priority=pd.Series(dtype="int64"))
    flagged = receipts["items_flagged"] if "items_flagged" in receipts else pd.Series(False, index=receipts.index)
    ordered = receipts.assign(
        _flagged=~flagged.fillna(False).astype(bool),
        _confidence=receipts["confidence"].astype(float).fillna(0.0),
        _mean=receipts["mean_confidence"].astype(float).fillna(0.0),
    ).sort_values(["_flagged", "_confidence", "_mean", "key"], kind="stable")
    ordered = ordered.drop(columns=["_flagged", "_confidence", "_mean"]).reset_index(drop=True)
    ordered["review_priority"] = np.arange(1, len(ordered) + 1, dtype=np.int64)
    return ordered


# ------------------------------------------------------------------------------------------ outputs


def confidence_histogram_png(words: pd.DataFrame) -> bytes:
    """How confident the model was, word by word: the words it labelled and the words it left O, stacked."""
    import matplotlib

    from receipt_pipeline.core.evaluation import figure_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(0.0, 1.0, 21)
    confidence = words["confidence"].astype(float) if len(words) else pd.Series(dtype=float)
    entity = words["label"].notna() if len(words) else pd.Series(dtype=bool)
    figure, axes = plt.subplots(figsize=(6.0, 3.0))
    axes.hist(
        [confidence[entity].dropna(), confidence[~entity].dropna()],
        bins=bins,
        stacked=True,
        label=["labelled words", "words left O"],
        color=["#3b75af", "#c8c8c8"],
    )
    axes.set_xlabel("confidence (softmax probability of the predicted tag)")
    axes.set_ylabel("words")
    axes.legend(fontsize=8)
    return figure_png(figure, dpi=80)


def write_tables(folder: str, predictions: Predictions) -> dict[str, str]:
    """The word, receipt and line-item tables as parquet (the receipts and items as CSV too) under ``folder``:
    name -> uri."""
    import pyarrow.parquet as pq

    frames = {"words": predictions.words, "receipts": predictions.receipts, "line_items": predictions.items}
    files = {}
    for name, frame in frames.items():
        files[f"{name}_table"] = storage.join(folder, f"{name}.parquet")
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        storage.write_bytes(files[f"{name}_table"], buffer.getvalue().to_pybytes())
        if name != "words":
            files[f"{name}_csv"] = storage.join(folder, f"{name}.csv")
            storage.write_bytes(files[f"{name}_csv"], frame.to_csv(index=False).encode())
    return files


def receipt_summary(predictions: Predictions, key: str) -> dict:
    """One receipt's fields with their confidences, its line items and whether they add up, and its words with
    their labels: JSON-ready."""
    row = predictions.receipts.loc[predictions.receipts["key"] == key].iloc[0].to_dict()
    fields_read = {
        name: {"value": row.get(name), "confidence": row.get(f"{name}_confidence")}
        | ({"text": row.get(f"{name}_text")} if f"{name}_text" in row else {})
        for name in FIELD_LABELS
    }
    own = predictions.words.loc[predictions.words["key"] == key]
    items = predictions.items.loc[predictions.items["key"] == key].drop(columns=["key"])
    return _plain(
        {
            "key": key,
            "image_id": row["image_id"],
            "receipt_id": row["receipt_id"],
            "confidence": row["confidence"],
            "review_priority": row["review_priority"],
            "fields": fields_read,
            "line_items": items.to_dict(orient="records"),
            "items_check": {
                "status": row["items_check"],
                "items_sum": row["items_sum"],
                "expected": row["items_expected"],
                "flagged": bool(row["items_flagged"]),
            },
            "words": [
                {
                    "line_id": word.line_id,
                    "word_id": word.word_id,
                    "text": word.text,
                    "label": word.label,
                    "confidence": word.confidence,
                }
                for word in own.itertuples(index=False)
            ],
        }
    )


def _plain(value):
    """numpy scalars to Python ones, NaN to None: what json.dumps takes."""
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
