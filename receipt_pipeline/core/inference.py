"""The production model run over receipts that nobody labelled: a label and a confidence per word, and the
receipt's fields (merchant, address, date, total and the other receipt-level amounts) normalised.

Words come in as a word table (:mod:`word_table`: the table's receipts read by
``dynamo_reader.read_receipts_to_predict``, or SROIE's), are cut into the windows training cut
(:func:`windows.write_windows`, with the model's own tokenizer and tag list) and predicted in batches; each
word keeps the prediction of the window in which it sits furthest from an edge
(:func:`windows.merge_word_predictions`), with that prediction's softmax probability as its confidence.
"""

from __future__ import annotations

import json
import re
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

from receipt_pipeline.core import bio, storage, word_table
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.errors import ExplainedError

# field -> the labels a model may call it by, in order of preference: the table's names, SROIE's own, a merge
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "merchant": ("MERCHANT_NAME", "COMPANY"),
    "address": ("ADDRESS_LINE", "ADDRESS"),
    "date": ("DATE",),
    "total": ("GRAND_TOTAL", "TOTAL", "AMOUNT"),
    "subtotal": ("SUBTOTAL",),
    "tax": ("TAX",),
    "tip": ("TIP",),
    "change": ("CHANGE",),
    "cash_back": ("CASH_BACK",),
    "refund": ("REFUND",),
}
# receipt-level amounts, given as decimal strings; per-item amounts (LINE_TOTAL, UNIT_PRICE) stay in the words
AMOUNT_FIELDS = ("total", "subtotal", "tax", "tip", "change", "cash_back", "refund")
# the fields a receipt's confidence (and so its place in the review queue) is read from
KEY_FIELDS = ("merchant", "address", "date", "total")
# the name evaluation.extract_fields knows a field's extraction by (a merchant is SROIE's company)
_EXTRACTION_NAMES = {"merchant": "company"}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DECIMAL = re.compile(r"^\d+\.\d{2}$")
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


def _window_rows(receipts: Sequence[tuple[str, pd.DataFrame]]) -> pa.Table:
    """The split's columns that :func:`windows.write_windows` reads, every receipt in ``test``, every tag O."""
    boxes = [
        bio.scale_boxes(group["x0"].to_numpy(), group["y0"].to_numpy(), group["x1"].to_numpy(), group["y1"].to_numpy())
        for _, group in receipts
    ]
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
    loaded: LoadedModel, words: pd.DataFrame, *, batch_size: int = 32, chunk_receipts: int = 256
) -> Predictions:
    """A label (None for O) and confidence per word of ``words`` (a word table), and the fields of each receipt.

    Receipts go through in chunks of ``chunk_receipts``, so memory follows the chunk, not the table.
    """
    from receipt_pipeline.core.evaluation import predict_with_confidence, repair_bio, word_confidences
    from receipt_pipeline.core.windows import WindowOptions, WindowSet, merge_word_predictions, write_windows

    started = time.perf_counter()
    max_length = min(512, int(getattr(loaded.model.config, "max_position_embeddings", 512)))
    options = WindowOptions(max_length=max_length, stride=min(128, max_length // 4))
    receipts = _receipts_of(words)
    word_rows: list[pd.DataFrame] = []
    receipt_rows: list[dict] = []
    windows_cut = 0
    with tempfile.TemporaryDirectory(prefix="receipt-predictions-") as scratch:
        for start in range(0, len(receipts), chunk_receipts):
            chunk = receipts[start : start + chunk_receipts]
            folder = str(PurePosixPath(scratch) / f"chunk-{start:08d}")
            manifest, _ = write_windows(
                _window_rows(chunk).to_batches(), loaded.tokenizer, loaded.labels, folder, options
            )
            windows = WindowSet(manifest, "test")
            windows_cut += len(windows)
            ids, probabilities = predict_with_confidence(loaded.model, windows, loaded.pad_token_id, batch_size)
            merged = merge_word_predictions(windows, ids)
            sure = word_confidences(windows, probabilities)
            for key, group in chunk:
                tag_ids = merged.get(key, np.full(len(group), -1))
                tags = repair_bio([loaded.tags[i] if i >= 0 else OUTSIDE for i in tag_ids.tolist()])
                confidence = sure.get(key, np.full(len(group), np.nan))
                word_rows.append(_word_frame(key, group, tags, confidence))
                receipt_rows.append(receipt_row(key, group, tags, confidence, loaded.labels))
            shutil.rmtree(folder, ignore_errors=True)
    predicted = pd.concat(word_rows, ignore_index=True) if word_rows else pd.DataFrame(columns=WORD_COLUMNS)
    table = with_review_priority(pd.DataFrame(receipt_rows, columns=receipt_columns()))
    labels = Counter(predicted["label"].dropna().tolist())
    return Predictions(predicted, table, loaded.version, windows_cut, time.perf_counter() - started, labels)


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


def field_labels(labels: Sequence[str]) -> dict[str, str]:
    """Field -> the label this model calls it by, for the fields it has a label for."""
    known = set(labels)
    return {
        name: next(label for label in candidates if label in known)
        for name, candidates in FIELD_LABELS.items()
        if any(label in known for label in candidates)
    }


def receipt_columns() -> list[str]:
    columns = ["key", "source", "image_id", "receipt_id", "words", "entity_words", "mean_confidence", "confidence"]
    for name in FIELD_LABELS:
        columns += [name] + ([f"{name}_text"] if name == "date" or name in AMOUNT_FIELDS else [])
        columns.append(f"{name}_confidence")
    return [*columns, "review_priority"]


def normalised(name: str, text: str) -> str | None:
    """A field's value as the receipts table gives it: a date as ISO 8601 (year-month-day), an amount as a
    decimal string with two places, the rest as the words say; None where the words give no such value."""
    from receipt_pipeline.core.evaluation import comparable

    text = (text or "").strip()
    if not text:
        return None
    if name == "date":
        value = comparable("date", text)
        return value if _ISO_DATE.match(value) else None
    if name in AMOUNT_FIELDS:
        value = comparable("total", text)
        return value if _DECIMAL.match(value) else None
    return text


def receipt_row(
    key: str, group: pd.DataFrame, tags: Sequence[str], confidence: np.ndarray, labels: Sequence[str]
) -> dict:
    """One receipt's fields, each with its confidence: the lowest of the confidences of the words it is made
    of, a field no more certain than its least certain word. The receipt's confidence is the lowest of its key
    fields' (merchant, address, date, total, where the model has their labels), a field it found no word for
    counting 0: the review queue puts first what is least certain or missing."""
    from receipt_pipeline.core.evaluation import extract_fields, field_words

    words = group["text"].astype(str).tolist()
    known = field_labels(labels)
    named = {_EXTRACTION_NAMES.get(name, name): label for name, label in known.items()}
    texts = extract_fields(words, list(tags), named)
    chosen = field_words(words, list(tags), named)
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
        extraction = _EXTRACTION_NAMES.get(name, name)
        text = texts.get(extraction, "") if name in known else ""
        indices = chosen.get(extraction, []) if name in known else []
        value = normalised(name, text)
        scores = sure[indices] if indices else np.zeros(0)
        field_confidence = float(np.nanmin(scores)) if len(scores) and not np.isnan(scores).all() else None
        row[name] = value
        if name == "date" or name in AMOUNT_FIELDS:
            row[f"{name}_text"] = text or None
        row[f"{name}_confidence"] = field_confidence
        if name in KEY_FIELDS and name in known:
            key_confidences.append(field_confidence if value is not None and field_confidence is not None else 0.0)
    row["confidence"] = min(key_confidences) if key_confidences else None
    return row


def with_review_priority(receipts: pd.DataFrame) -> pd.DataFrame:
    """The receipts, least confident first, numbered 1, 2, ... in ``review_priority``."""
    if not len(receipts):
        return receipts.assign(review_priority=pd.Series(dtype="int64"))
    ordered = receipts.assign(
        _confidence=receipts["confidence"].astype(float).fillna(0.0),
        _mean=receipts["mean_confidence"].astype(float).fillna(0.0),
    ).sort_values(["_confidence", "_mean", "key"], kind="stable")
    ordered = ordered.drop(columns=["_confidence", "_mean"]).reset_index(drop=True)
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
    """The word table and the receipt table as parquet (and the receipts as CSV) under ``folder``: name -> uri."""
    import pyarrow.parquet as pq

    files = {
        "words_table": storage.join(folder, "words.parquet"),
        "receipts_table": storage.join(folder, "receipts.parquet"),
        "receipts_csv": storage.join(folder, "receipts.csv"),
    }
    for name, frame in (("words_table", predictions.words), ("receipts_table", predictions.receipts)):
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        storage.write_bytes(files[name], buffer.getvalue().to_pybytes())
    storage.write_bytes(files["receipts_csv"], predictions.receipts.to_csv(index=False).encode())
    return files


def receipt_summary(receipts: pd.DataFrame, words: pd.DataFrame, key: str) -> dict:
    """One receipt's fields with their confidences and its words with their labels: JSON-ready."""
    row = receipts.loc[receipts["key"] == key].iloc[0].to_dict()
    fields = {
        name: {"value": row.get(name), "confidence": row.get(f"{name}_confidence")}
        | ({"text": row.get(f"{name}_text")} if f"{name}_text" in row else {})
        for name in FIELD_LABELS
    }
    own = words.loc[words["key"] == key]
    return _plain(
        {
            "key": key,
            "image_id": row["image_id"],
            "receipt_id": row["receipt_id"],
            "confidence": row["confidence"],
            "review_priority": row["review_priority"],
            "fields": fields,
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
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
