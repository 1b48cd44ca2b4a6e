"""Scoring predicted tags: seqeval entity-level metrics (strict IOB2) and SROIE field-level exact match."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from receipt_pipeline.core import table_scores
from receipt_pipeline.core.batching import WindowCollator
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.fields import comparable, date_orders, extract_fields, field_errors, field_scores, order_of
from receipt_pipeline.core.receipt_values import DateOrder
from receipt_pipeline.core.windows import WindowSet, merge_word_predictions

# most receipts of its own training split a report scores the model on, beside the test receipts
TRAIN_SAMPLE_MAX = 200


def repair_bio(tags: Sequence[str]) -> list[str]:
    """Predicted tags as the references are built: each run of one label is one entity (``B-X``, then ``I-X``).

    The table stores a label per word and :func:`~receipt_pipeline.core.bio.bio_tags` makes each run of a label
    one entity, so no reference ever has two X entities side by side; a predicted ``B-X`` inside a run of X (the
    model unsure where a long product name goes on) would otherwise split one right entity into wrong pieces."""
    repaired = []
    previous = OUTSIDE
    for tag in tags:
        if tag != OUTSIDE:
            tag = ("I-" if previous[2:] == tag[2:] else "B-") + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def receipt_tags(windows: WindowSet, predictions: Sequence[np.ndarray]) -> dict[str, list[str]]:
    """Predicted tag ids per window token, merged to one repaired tag sequence per receipt."""
    merged = merge_word_predictions(windows, predictions)
    return {
        key: repair_bio([windows.tags[i] if i >= 0 else OUTSIDE for i in ids.tolist()]) for key, ids in merged.items()
    }


def true_receipt_tags(windows: WindowSet) -> dict[str, list[str]]:
    """The reference tags per receipt, read back from the windows' labels."""
    return receipt_tags(windows, [windows[i]["labels"] for i in range(len(windows))])


def entity_scores(truth: Mapping[str, list[str]], predicted: Mapping[str, list[str]]) -> dict:
    """seqeval, strict IOB2, entity level: overall and per-label precision, recall, F1 and support."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    keys = sorted(truth)
    y_true = [truth[key] for key in keys]
    y_pred = [predicted.get(key, [OUTSIDE] * len(truth[key])) for key in keys]
    report = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    labels = {
        name: _rounded(values)
        for name, values in report.items()
        if name not in ("micro avg", "macro avg", "weighted avg")
    }
    overall = _rounded(report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}))
    return {"overall": overall, "per_label": labels, "receipts": len(keys)}


def overall_entity_scores(truth: Mapping[str, list[str]], predicted: Mapping[str, list[str]]) -> dict:
    """:func:`entity_scores`' overall figures alone, the same numbers at a thirtieth of the time (seqeval's
    per-label report is what costs): for scoring one set of predictions many ways."""
    from seqeval.metrics.v1 import precision_recall_fscore_support
    from seqeval.scheme import IOB2

    keys = sorted(truth)
    y_pred = [predicted.get(key, [OUTSIDE] * len(truth[key])) for key in keys]
    precision, recall, f1, support = precision_recall_fscore_support(
        [truth[key] for key in keys], y_pred, average="micro", scheme=IOB2, zero_division=0
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def _rounded(values: Mapping) -> dict:
    return {
        "precision": float(values["precision"]),
        "recall": float(values["recall"]),
        "f1": float(values["f1-score"]),
        "support": int(values["support"]),
    }


# ------------------------------------------------------------------------------------------ confusion


def confusion_matrix(truth: Mapping[str, list[str]], predicted: Mapping[str, list[str]], labels: Sequence[str]):
    """Word-level confusion over entity labels (B- and I- folded) plus O: rows truth, columns predicted."""
    from sklearn.metrics import confusion_matrix as counted

    def label(tag: str) -> str:
        return tag if tag == OUTSIDE else tag[2:]

    names = [*labels, OUTSIDE]
    y_true, y_pred = [], []
    for key, reference in truth.items():
        guess = predicted.get(key, [OUTSIDE] * len(reference))
        if len(guess) != len(reference):
            raise ValueError(f"receipt {key}: {len(guess)} predicted tags for {len(reference)} words")
        y_true.extend(label(tag) for tag in reference)
        y_pred.extend(label(tag) for tag in guess)
    if not y_true:
        return names, np.zeros((len(names), len(names)), dtype=np.int64)
    return names, counted(y_true, y_pred, labels=names).astype(np.int64)


def confusion_png(names: Sequence[str], matrix: np.ndarray) -> bytes:
    """The confusion matrix as a PNG, rows normalised so small labels stay readable."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.45 * len(names))
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("word-level confusion (row share)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return figure_png(figure, dpi=110)


# ------------------------------------------------------------------------------------------ the run


def load_classifier(checkpoint: str):
    """A trained classifier from a local folder or an ``s3://`` prefix; safetensors weights only."""
    from transformers import LayoutLMForTokenClassification

    from receipt_pipeline.core import base_model

    location = base_model.resolve(checkpoint)
    return LayoutLMForTokenClassification.from_pretrained(location, use_safetensors=True)


def predict(model, windows: WindowSet, pad_token_id: int, batch_size: int = 32) -> list[np.ndarray]:
    """The predicted tag id of every token of every window, longest windows first to pad little."""
    return predict_with_confidence(model, windows, pad_token_id, batch_size)[0]


def predict_with_confidence(
    model, windows: WindowSet, pad_token_id: int, batch_size: int = 32
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`predict`, with the softmax probability of each predicted tag beside it."""
    import torch

    device = next(model.parameters()).device
    collate = WindowCollator(pad_token_id)
    order = np.argsort(-windows.lengths, kind="stable")
    predictions: list[np.ndarray | None] = [None] * len(windows)
    confidences: list[np.ndarray | None] = [None] * len(windows)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = collate([windows[int(i)] for i in chosen])
            batch.pop("labels")
            logits = model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits
            probabilities, ids = logits.float().softmax(dim=-1).max(dim=-1)
            ids, probabilities = ids.cpu().numpy(), probabilities.cpu().numpy()
            for row, index in enumerate(chosen):
                predictions[int(index)] = ids[row, : windows.lengths[int(index)]]
                confidences[int(index)] = probabilities[row, : windows.lengths[int(index)]]
    return predictions, confidences  # type: ignore[return-value]


def word_confidences(windows: WindowSet, confidences: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per receipt word, the confidence of the prediction :func:`merge_word_predictions` keeps for it (NaN
    where no window holds the word): the same token is chosen, read through its position among all tokens."""
    starts = np.r_[0, np.cumsum([len(c) for c in confidences])]
    positions = [np.arange(start, start + len(c)) for start, c in zip(starts, confidences, strict=False)]
    flat = np.concatenate([np.asarray(c, dtype=np.float64) for c in confidences]) if confidences else np.zeros(0)
    merged = merge_word_predictions(windows, positions)
    return {key: np.where(index >= 0, flat[np.maximum(index, 0)], np.nan) for key, index in merged.items()}


@dataclass
class Report:
    checkpoint: str
    split: str
    receipts: int
    windows: int
    entity: dict
    fields: dict | None  # SROIE field-level scores, where the split has SROIE receipts with references
    confusion_labels: list[str]
    confusion: list[list[int]]
    labels: list[str] = dataclasses.field(default_factory=list)
    # receipt key -> label -> [correct, predicted, true] entities: what a paired comparison resamples
    receipt_counts: dict = dataclasses.field(default_factory=dict)
    # slice name -> receipts, support and scores (see slice_groups)
    slices: dict = dataclasses.field(default_factory=dict)
    # per-receipt rows and token errors (receipt_details): written beside the report, never in its JSON
    details: dict = dataclasses.field(default_factory=dict, repr=False)
    # the table's receipts: field exact match and line items, against their VALID labels' extraction
    table: dict | None = None
    # the product-detail labels' scores and macro F1 (table_scores.product_detail_scores)
    product_details: dict = dataclasses.field(default_factory=dict)
    # the model on a sample of its own training receipts, and the gap to these (see evaluate)
    train_sample: dict | None = None

    def headline(self) -> dict[str, float]:
        figures = {
            "entity_f1": self.entity["overall"]["f1"],
            "entity_precision": self.entity["overall"]["precision"],
            "entity_recall": self.entity["overall"]["recall"],
        }
        if self.fields:
            figures.update(
                field_f1=self.fields["overall"]["f1"],
                field_precision=self.fields["overall"]["precision"],
                field_recall=self.fields["overall"]["recall"],
            )
        figures.update(table_scores.headline(self.table, self.product_details))
        if self.train_sample:
            figures["train_test_entity_f1_gap"] = self.train_sample["entity_f1_gap"]
        return figures

    def to_dict(self) -> dict:
        document = {**asdict(dataclasses.replace(self, details={})), **self.headline()}
        document.pop("details")
        return document

    def markdown(self) -> str:
        lines = [
            f"# Evaluation of `{self.checkpoint}`",
            "",
            f"Split `{self.split}`: {self.receipts} receipts, {self.windows} windows. "
            "Entity level: seqeval, strict IOB2, after merging windows and repairing BIO.",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
        ]
        rows = sorted(self.entity["per_label"].items()) + [("**overall**", self.entity["overall"])]
        lines += [
            f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
            for name, v in rows
        ]
        if self.slices:
            lines += [
                "",
                "Slices (entity level; a merchant is seen when train holds it, a receipt recent when added on or "
                "after the split's `recent_since`):",
                "",
                "| slice | receipts | entities | precision | recall | F1 | table field F1 | line-item F1 |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {name} | {v['receipts']} | {v['support']} | {_scores_row(v)} | {_figure(v.get('field_f1'))} "
                f"| {_figure(v.get('line_item_f1'))} |"
                for name, v in self.slices.items()
            ]
        if self.fields:
            errors = self.fields.get("errors") or {}
            lines += [
                "",
                f"SROIE field-level exact match ({self.fields['receipts']} receipts, whitespace and case ignored, "
                "totals compared as amounts and dates as dates). A wrong value is a tagging error where the "
                "same extraction applied to the true tags is right, else an extraction error:",
                "",
                "| field | precision | recall | F1 | correct | support | tagging errors | extraction errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            field_rows = list(self.fields["per_field"].items()) + [("**overall**", self.fields["overall"])]
            for name, v in field_rows:
                counts = errors.get(name) or {
                    "tagging": sum(e["tagging"] for e in errors.values()),
                    "extraction": sum(e["extraction"] for e in errors.values()),
                }
                lines.append(
                    f"| {name} | {_scores_row(v)} | {v['correct']} | {v['support']} | {counts['tagging']} "
                    f"| {counts['extraction']} |"
                )
            if self.fields.get("from_true_tags"):
                lines += [
                    "",
                    f"The extraction applied to the true tags: field F1 {self.fields['from_true_tags']['f1']:.3f}.",
                ]
        lines += table_scores.markdown(self.table, self.product_details, self.train_sample)
        return "\n".join(lines) + "\n"


def _scores_row(values: Mapping) -> str:
    return f"{values['precision']:.3f} | {values['recall']:.3f} | {values['f1']:.3f}"


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def evaluate(
    checkpoint: str,
    manifest: dict,
    *,
    split: str = "test",
    words: Mapping[str, Sequence[str]] | None = None,
    references: Mapping[str, Mapping[str, str]] | None = None,
    sroie_labels: Mapping[str, str] | None = None,
    model=None,
    pad_token_id: int = 0,
    receipts: Mapping[str, Mapping] | None = None,
    train_merchants: set[str] | None = None,
    recent_since: str | None = None,
    layouts: Mapping[str, table_scores.ReceiptLayout] | None = None,
    table_date_order: DateOrder = "MDY",
    train_sample: int = 0,
) -> Report:
    """Score a checkpoint on one split of the windows.

    ``words`` (receipt key -> words) and ``references`` (receipt key -> SROIE field -> string: the split's
    ``reference_fields``) enable field-level scoring of the receipts that have references; ``sroie_labels``
    maps SROIE's field labels (COMPANY, ...) to the label names the model was trained with. ``receipts``
    (key -> source, merchant, added_at: the split's columns), ``train_merchants`` and ``recent_since`` (the
    split record's) give the slices, and with ``words`` the per-receipt table and the token errors.
    ``layouts`` (the split's words, boxes and lines: table_scores.layouts_of) score the table's receipts' fields
    and line items, their dates read in ``table_date_order``. ``train_sample`` > 0 also scores the model on that
    many receipts of the windows' train split (a seeded sample), and the gap between the two.
    """
    windows = WindowSet(manifest, split)
    model = model or load_classifier(checkpoint)
    model_tags = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_tags != windows.tags:
        raise ValueError(f"checkpoint {checkpoint} predicts {model_tags}, the windows are tagged {windows.tags}")
    ids, confidences = predict_with_confidence(model, windows, pad_token_id)
    predicted = receipt_tags(windows, ids)
    truth = true_receipt_tags(windows)
    names, matrix = confusion_matrix(truth, predicted, windows.label_names)
    fields = None
    orders = date_orders(table_date_order)
    if words is not None and references:
        field_labels = {name.lower(): label for name, label in (sroie_labels or {}).items()}
        scored = {key: references[key] for key in predicted if key in references}
        guesses = {key: extract_fields(words[key], predicted[key], field_labels) for key in scored}
        oracle = {key: extract_fields(words[key], truth[key], field_labels) for key in scored}
        if scored:
            fields = field_scores(scored, guesses, orders=orders)
            fields["errors"] = field_errors(scored, guesses, oracle, orders=orders)
            fields["from_true_tags"] = field_scores(scored, oracle, orders=orders)["overall"]
    counts = receipt_entity_counts(truth, predicted)
    table = table_scores.table_scores(truth, predicted, layouts or {}, windows.label_names, table_date_order)
    entity = entity_scores(truth, predicted)
    report = Report(
        checkpoint=checkpoint,
        split=split,
        receipts=len(truth),
        windows=len(windows),
        entity=entity,
        fields=fields,
        confusion_labels=names,
        confusion=matrix.tolist(),
        labels=list(windows.label_names),
        receipt_counts=counts,
        table={name: value for name, value in table.items() if not name.endswith("_counts")} if table else None,
        product_details=table_scores.product_detail_scores(entity["per_label"]),
    )
    if train_sample > 0:
        report.train_sample = score_train_sample(model, manifest, pad_token_id, train_sample, report)
    if receipts is not None:
        groups = slice_groups(receipts, set(truth), train_merchants or set(), recent_since)
        report.slices = slice_scores(counts, groups)
        for name, figures in table_scores.slice_figures(table, groups).items():
            report.slices[name].update(figures)
        if words is not None:
            field_labels = {
                name.lower(): label for name, label in (sroie_labels or {}).items() if label in windows.label_names
            }
            report.details = receipt_details(
                truth,
                predicted,
                word_confidences(windows, confidences),
                words,
                receipts,
                counts,
                field_labels,
                references or {},
                train_merchants or set(),
                recent_since,
                orders,
                (table or {}).get("item_counts", {}),
            )
    return report


def train_sample_keys(receipts: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """``size`` of ``receipts``, chosen by a seeded hash of each key: the same sample for the same receipts."""
    ranked = sorted(receipts, key=lambda key: hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest())
    return sorted(ranked[:size])


def score_train_sample(model, manifest: dict, pad_token_id: int, size: int, test: Report) -> dict | None:
    """The model on a sample of its own training receipts (entity F1, product-detail macro F1) beside the same
    figures on ``test``'s receipts: a large gap reads as templates memorised. None without train windows."""
    if not manifest.get("splits", {}).get("train", {}).get("shards"):
        return None
    windows = WindowSet(manifest, "train")
    keys = train_sample_keys(sorted(set(windows.receipts)), size)
    sample = windows.subset(keys)
    predicted = receipt_tags(sample, predict(model, sample, pad_token_id))
    scores = entity_scores(true_receipt_tags(sample), predicted)
    details = table_scores.product_detail_scores(scores["per_label"])
    test_macro = test.product_details.get("macro_f1")
    return {
        "receipts": len(keys),
        "entity_f1": scores["overall"]["f1"],
        "test_entity_f1": test.entity["overall"]["f1"],
        "entity_f1_gap": scores["overall"]["f1"] - test.entity["overall"]["f1"],
        "product_detail_macro_f1": details["macro_f1"],
        "test_product_detail_macro_f1": test_macro,
        "product_detail_macro_f1_gap": None
        if details["macro_f1"] is None or test_macro is None
        else details["macro_f1"] - test_macro,
    }


class ModelFolderError(ExplainedError, ValueError):
    """A checkpoint folder that cannot be scored; the message names it and what it lacks."""


CHECKPOINT_FILES = ("config.json", "model.safetensors", "label_map.json")


def checkpoint_folder(checkpoint: str) -> Path:
    """The local folder of a trained checkpoint (an ``s3://`` prefix is downloaded), checked to hold what a
    model the pipeline trained holds; :class:`ModelFolderError` names the checkpoint and the missing files."""
    from receipt_pipeline.core import base_model, storage

    if not storage.is_s3(checkpoint) and not Path(checkpoint).expanduser().is_dir():
        raise ModelFolderError(f"checkpoint {checkpoint!r}: no such folder")
    try:
        folder = Path(base_model.resolve(checkpoint))
    except base_model.BaseModelError as error:
        raise ModelFolderError(str(error)) from None
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"checkpoint {checkpoint!r} has no {', '.join(missing)}: not a model folder that layoutlm_checkpoint wrote"
        )
    return folder


@dataclass
class FolderEvaluation:
    report: Report
    # every file or line of the folder that could not be fully used, as sroie_receipts reports them
    problems: list


def evaluate_sroie_folder(checkpoint: str, sroie_dir: str, work_dir: str) -> FolderEvaluation:
    """Score a checkpoint on a SROIE-layout folder: every split in it, or the folder itself if it is one.

    Windows are cut with the checkpoint's own tokenizer and tag list into ``work_dir``.
    """
    import json
    from pathlib import PurePosixPath

    from receipt_pipeline.core import base_model, bio
    from receipt_pipeline.core.sroie import read_sroie_folder
    from receipt_pipeline.core.windows import WindowOptions, write_windows

    location = str(checkpoint_folder(checkpoint))
    label_map = json.loads((Path(location) / "label_map.json").read_text())
    model_labels: list[str] = label_map["labels"]
    # SROIE's field labels under the names the model learnt them by (the table's, or SROIE's own)
    sroie_labels = {
        field: mapped if mapped in model_labels else field for field, mapped in bio.DEFAULT_SROIE_LABELS.items()
    }
    unknown = sorted(set(sroie_labels.values()) - set(model_labels))
    if unknown:
        raise ValueError(f"checkpoint {checkpoint} has no label for SROIE's {unknown}; it knows {model_labels}")
    sroie = read_sroie_folder(sroie_dir)
    options = bio.SplitOptions(shares=(0.0, 0.0, 1.0), entity_share_target=0, sroie_labels=sroie_labels)
    split = bio.build_split([sroie.frame], options)
    tokenizer = base_model.load_tokenizer(location)
    manifest, _ = write_windows(
        split.table.to_batches(),
        tokenizer,
        model_labels,
        str(PurePosixPath(work_dir) / "windows"),
        WindowOptions(),
        settings={"tokenizer": {"base_model": checkpoint, "fingerprint": base_model.tokenizer_fingerprint(tokenizer)}},
    )
    words = dict(zip(split.table.column("key").to_pylist(), split.table.column("words").to_pylist(), strict=True))
    report = evaluate(
        checkpoint,
        manifest,
        split="test",
        words=words,
        references=bio.reference_fields(split.table),
        sroie_labels=sroie_labels,
        model=load_classifier(location),
        pad_token_id=tokenizer.pad_token_id,
    )
    return FolderEvaluation(report, sroie.problems)


# ------------------------------------------------------------------------------------------ per receipt


def receipt_entity_counts(
    truth: Mapping[str, list[str]], predicted: Mapping[str, list[str]]
) -> dict[str, dict[str, list[int]]]:
    """Per receipt and label, [correct, predicted, true] entities as seqeval's strict IOB2 mode counts them:
    summed over any set of receipts they give that set's micro scores, which is what a paired comparison of
    two models, receipt by receipt, resamples."""
    from seqeval.scheme import IOB2, Entities

    counts: dict[str, dict[str, list[int]]] = {}
    for key, reference in truth.items():
        guess = predicted.get(key, [OUTSIDE] * len(reference))
        true = {e.to_tuple()[1:] for e in Entities([reference], IOB2, suffix=False).entities[0]}
        found = {e.to_tuple()[1:] for e in Entities([guess], IOB2, suffix=False).entities[0]}
        per_label: dict[str, list[int]] = {}
        for entity in true | found:
            row = per_label.setdefault(entity[0], [0, 0, 0])
            row[0] += entity in true and entity in found
            row[1] += entity in found
            row[2] += entity in true
        counts[key] = per_label
    return counts


def model_receipt_tags(model, windows: WindowSet, pad_token_id: int) -> dict[str, list[str]]:
    """A model's repaired tags per receipt on ``windows``, read through the model's own tag names: a model
    with another label list (a production model from before a label change) is scored on the same words."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    merged = merge_word_predictions(windows, predict(model, windows, pad_token_id))
    return {key: repair_bio([names[i] if i >= 0 else OUTSIDE for i in ids.tolist()]) for key, ids in merged.items()}


def score_on_same_receipts(
    model_dir: str, manifest: dict, split: str, rows, work_dir: str, table_date_order: DateOrder = "MDY"
) -> dict:
    """Another model (the production one) scored on the receipts of ``manifest``'s ``split``, against the same
    true tags: {"labels", "counts", "entity_f1", "figures"}, the figures being the table's field and line-item F1
    and the product-detail macro F1 (table_scores.headline). Windows cut with another tokenizer would feed it ids
    it never learnt, so a model whose tokenizer differs gets the split's ``rows`` cut again with its own."""
    import json
    from pathlib import PurePosixPath

    from receipt_pipeline.core import base_model
    from receipt_pipeline.core.windows import WindowOptions, write_windows

    location = str(checkpoint_folder(model_dir))
    labels = json.loads((Path(location) / "label_map.json").read_text())["labels"]
    model = load_classifier(location)
    tokenizer = base_model.load_tokenizer(location)
    windows = WindowSet(manifest, split)
    truth = true_receipt_tags(windows)
    own_windows = windows
    if base_model.tokenizer_fingerprint(tokenizer) != manifest.get("tokenizer", {}).get("fingerprint"):
        window = manifest.get("window", {})
        options = WindowOptions(max_length=window.get("max_length", 512), stride=window.get("stride", 128))
        columns = ["key", "split", "words", "boxes", "tags"]
        cut, _ = write_windows(
            rows.select(columns).to_batches(),
            tokenizer,
            manifest["labels"],
            str(PurePosixPath(work_dir) / "windows"),
            options,
        )
        own_windows = WindowSet(cut, split)
    predicted = model_receipt_tags(model, own_windows, tokenizer.pad_token_id)
    table = table_scores.table_scores(
        truth, predicted, table_scores.layouts_of(rows), manifest["labels"], table_date_order
    )
    details = table_scores.product_detail_scores(entity_scores(truth, predicted)["per_label"])
    return {
        "labels": labels,
        "counts": receipt_entity_counts(truth, predicted),
        "entity_f1": overall_entity_scores(truth, predicted)["f1"],
        "figures": table_scores.headline(table, details),
    }


# ------------------------------------------------------------------------------------------ slices


def slice_groups(
    receipts: Mapping[str, Mapping], keys: set[str], train_merchants: set[str], recent_since: str | None
) -> dict[str, list[str]]:
    """Receipt keys per slice: by source, seen or unseen merchant (``unknown`` apart), recent or older."""
    from receipt_pipeline.core.bio import UNKNOWN_MERCHANT
    from receipt_pipeline.core.word_table import sortable_time

    groups: dict[str, list[str]] = {}
    since = sortable_time(recent_since) if recent_since else None
    for key in sorted(keys):
        info = receipts.get(key, {})
        names = [f"source: {info.get('source', key.split('/')[0])}"]
        merchant = info.get("merchant") or UNKNOWN_MERCHANT
        if merchant == UNKNOWN_MERCHANT:
            names.append("merchant: unknown")
        else:
            names.append("merchant: seen in train" if merchant in train_merchants else "merchant: unseen")
        added = info.get("added_at")
        if added and since is not None:
            names.append("added: recent" if sortable_time(added) >= since else "added: older")
        for name in names:
            groups.setdefault(name, []).append(key)
    return dict(sorted(groups.items()))


def slice_scores(counts: Mapping[str, Mapping[str, list[int]]], groups: Mapping[str, list[str]]) -> dict:
    """Micro entity scores per slice from the per-receipt counts (seqeval's, summed), with their support."""
    scores = {}
    for name, keys in groups.items():
        totals = np.zeros(3, dtype=np.int64)
        for key in keys:
            for row in counts.get(key, {}).values():
                totals += row
        correct, found, true = (int(v) for v in totals)
        scores[name] = {
            "receipts": len(keys),
            "support": true,
            "precision": correct / found if found else 0.0,
            "recall": correct / true if true else 0.0,
            "f1": 2 * correct / (found + true) if found + true else 0.0,
        }
    return scores


def receipt_details(
    truth: Mapping[str, list[str]],
    predicted: Mapping[str, list[str]],
    confidence: Mapping[str, np.ndarray],
    words: Mapping[str, Sequence[str]],
    receipts: Mapping[str, Mapping],
    counts: Mapping[str, Mapping[str, list[int]]],
    field_labels: Mapping[str, str],
    references: Mapping[str, Mapping[str, str]],
    train_merchants: set[str],
    recent_since: str | None,
    orders: Mapping[str, DateOrder] | None = None,
    item_counts: Mapping[str, Sequence[int]] | None = None,
) -> dict:
    """One row per receipt (its entity scores, word errors, field values predicted against expected, the
    source's stated values where it has them, else the true tags' extraction, and for the table's receipts the
    line items right, predicted and expected), and one row per wrong word with the model's confidence; the
    entity false positives most confidently wrong first are the review queue."""
    from receipt_pipeline.core.word_table import sortable_time

    since = sortable_time(recent_since) if recent_since else None
    rows, errors = [], []
    for key in sorted(truth):
        reference, guess = truth[key], predicted.get(key, [OUTSIDE] * len(truth[key]))
        sure = confidence.get(key, np.full(len(reference), np.nan))
        info = receipts.get(key, {})
        correct, found, true = np.sum(list(counts.get(key, {}).values()) or [[0, 0, 0]], axis=0).tolist()
        wrong = [i for i, (t, p) in enumerate(zip(reference, guess, strict=True)) if t != p]
        added = info.get("added_at")
        row = {
            "key": key,
            "source": info.get("source", key.split("/")[0]),
            "merchant": info.get("merchant"),
            "merchant_seen_in_train": info.get("merchant") in train_merchants,
            "added_at": added,
            "recent": bool(added and since is not None and sortable_time(added) >= since),
            "words": len(reference),
            "entities_true": true,
            "entities_predicted": found,
            "entities_correct": correct,
            "entity_f1": 2 * correct / (found + true) if found + true else 1.0,
            "word_errors": len(wrong),
            "mean_confidence": float(np.nanmean(sure)) if len(sure) and not np.isnan(sure).all() else None,
        }
        receipt_words = words.get(key, [])
        if field_labels and len(receipt_words) == len(reference):
            got = extract_fields(receipt_words, guess, field_labels)
            expected = references.get(key) or extract_fields(receipt_words, reference, field_labels)
            order = order_of(key, orders)
            for name in field_labels:
                value, want = got.get(name, ""), expected.get(name, "")
                row[f"{name}_predicted"], row[f"{name}_expected"] = value, want
                row[f"{name}_correct"] = bool(want) and comparable(name, value, order) == comparable(name, want, order)
        if item_counts and key in item_counts:
            row["items_correct"], row["items_predicted"], row["items_expected"] = (int(v) for v in item_counts[key])
        rows.append(row)
        for i in wrong:
            errors.append(
                {
                    "key": key,
                    "word_index": i,
                    "word": receipt_words[i] if i < len(receipt_words) else None,
                    "true": reference[i],
                    "predicted": guess[i],
                    "confidence": None if np.isnan(sure[i]) else float(sure[i]),
                }
            )
    queue = sorted(
        (e for e in errors if e["predicted"] != OUTSIDE and e["predicted"][2:] != e["true"][2:]),
        key=lambda e: -(e["confidence"] or 0.0),
    )
    return {"receipts": rows, "token_errors": errors, "review_queue": queue}


def per_label_f1_png(per_label: Mapping[str, Mapping]) -> bytes:
    """Per-label entity F1 as horizontal bars, with each label's support."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(per_label)
    figure, axes = plt.subplots(figsize=(6.0, max(2.0, 0.35 * len(names) + 1)))
    axes.barh(names, [per_label[n]["f1"] for n in names], color="#3b75af")
    for row, name in enumerate(names):
        axes.text(1.01, row, f"n={per_label[name]['support']}", va="center", fontsize=7)
    axes.set_xlim(0, 1.15)
    axes.invert_yaxis()
    axes.set_xlabel("entity F1 (strict IOB2)")
    axes.tick_params(axis="y", labelsize=8)
    return figure_png(figure, dpi=80)


def figure_png(figure, dpi: int) -> bytes:
    """A matplotlib figure laid out, drawn as PNG bytes and closed (pyplot keeps every open figure alive)."""
    import io

    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def embedded_png(title: str, png: bytes) -> str:
    """Markdown that shows a PNG inline, as the Dagster UI renders Markdown metadata: a data URI."""
    import base64

    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def write_details(folder: str, details: dict) -> dict[str, str]:
    """The per-receipt table (parquet and CSV), the token errors (JSONL) and the review queue (CSV): name -> uri."""
    import json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from receipt_pipeline.core import storage

    if not details:
        return {}
    receipts = pd.DataFrame(details["receipts"])
    queue = pd.DataFrame(
        details["review_queue"], columns=["key", "word_index", "word", "true", "predicted", "confidence"]
    )
    files = {
        "receipts_table": storage.join(folder, "receipts.parquet"),
        "receipts_csv": storage.join(folder, "receipts.csv"),
        "token_errors": storage.join(folder, "token_errors.jsonl"),
        "review_queue": storage.join(folder, "review_queue.csv"),
    }
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(receipts, preserve_index=False), buffer)
    storage.write_bytes(files["receipts_table"], buffer.getvalue().to_pybytes())
    storage.write_bytes(files["receipts_csv"], receipts.to_csv(index=False).encode())
    lines = "".join(json.dumps(error) + "\n" for error in details["token_errors"])
    storage.write_bytes(files["token_errors"], lines.encode())
    storage.write_bytes(files["review_queue"], queue.to_csv(index=False).encode())
    return files
