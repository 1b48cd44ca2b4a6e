"""The production model: a checkpoint copied to one stable place when it holds up against the current one.

The gate (:func:`decide_paired`) compares the candidate with the production model on the same receipts, the
candidate's test split, receipt by receipt: a seeded paired bootstrap of the F1 difference, and the drop of
each well-supported label.

The stable place (``s3://<bucket>/models/production`` or a local folder) holds the model's files and
``production.json``, which says what the model is: its checkpoint, data versions, report and scores.
``production.json`` is removed before a copy starts and written after every other file, so a copy cut
short leaves no folder that claims to be a production model.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np

from receipt_pipeline.core import storage
from receipt_pipeline.core.errors import ExplainedError

MANIFEST = "production.json"
METRIC = "entity_f1"  # seqeval strict IOB2, present in every report (field F1 needs SROIE test receipts)
MODEL_SUFFIXES = (".json", ".safetensors", ".txt")
COMPLETE_MARKER = "COMPLETE"


class PromotionError(ExplainedError, RuntimeError):
    pass


def production_root(artifact_root: str) -> str:
    """Where a deployment keeps its production model: ``models/production`` under its artifacts."""
    return storage.join(artifact_root, "models", "production")


def current_production(root: str) -> dict | None:
    """The manifest of the production model under ``root``, or None when none was promoted yet."""
    manifest = storage.join(root, MANIFEST)
    if not storage.exists(manifest):
        return None
    return json.loads(storage.read_bytes(manifest))


def promote(checkpoint_uri: str, root: str, manifest: dict) -> dict:
    """Copy the model files of ``checkpoint_uri`` into ``root`` and write ``manifest`` (plus the file list) last.

    Files of the previous production model that the new one lacks are removed, so the folder holds
    exactly one model.
    """
    prefix = checkpoint_uri.rstrip("/") + "/"
    files = [uri for uri in storage.list_files(checkpoint_uri) if "/" not in uri[len(prefix) :]]
    model_files = sorted(uri for uri in files if uri.endswith(MODEL_SUFFIXES))
    if not any(uri.endswith(".safetensors") for uri in model_files):
        raise PromotionError(f"{checkpoint_uri} holds no safetensors weights: not a model folder")
    names = [uri[len(prefix) :] for uri in model_files]
    storage.delete(storage.join(root, MANIFEST))
    storage.delete(storage.join(root, COMPLETE_MARKER))
    for uri, name in zip(model_files, names, strict=True):
        storage.copy(uri, storage.join(root, name))
    keep = {*names, MANIFEST, COMPLETE_MARKER}
    root_prefix = root.rstrip("/") + "/"
    for stale in storage.list_files(root):
        name = stale[len(root_prefix) :]
        if "/" not in name and name not in keep:
            storage.delete(stale)
    if storage.exists(prefix + COMPLETE_MARKER):
        storage.copy(prefix + COMPLETE_MARKER, storage.join(root, COMPLETE_MARKER))
    document = {**manifest, "files": names, "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    storage.write_bytes(storage.join(root, MANIFEST), json.dumps(document, indent=2, sort_keys=True).encode())
    return document


# ------------------------------------------------------------------------------------------ champion, challenger

RESAMPLES = 1000
MIN_LABEL_SUPPORT = 20  # a label's drop counts against the candidate from this many true entities on


@dataclass(frozen=True)
class PairedDecision:
    """The candidate against the production model, both scored on the candidate's test receipts."""

    passed: bool
    reason: str
    candidate_f1: float
    production_f1: float | None
    difference: float | None
    interval: tuple[float, float] | None  # 95%, bootstrap over receipts, of candidate minus production F1
    label_deltas: dict[str, dict]  # label -> candidate, production, delta, support
    labels_compared: list[str]
    receipts: int
    tolerance: float
    max_label_drop: float

    def metadata(self) -> dict:
        return {
            "candidate_f1": self.candidate_f1,
            "production_f1": self.production_f1,
            "difference": self.difference,
            "interval_95": list(self.interval) if self.interval else None,
            "label_deltas": self.label_deltas,
            "labels_compared": self.labels_compared,
            "receipts": self.receipts,
            "tolerance": self.tolerance,
            "max_label_drop": self.max_label_drop,
        }

    @classmethod
    def refused(cls, reason: str, candidate_f1: float, receipts: int, tolerance: float, max_label_drop: float):
        """A refusal decided before any paired comparison could be made (no production scores to pair with)."""
        return cls(False, reason, candidate_f1, None, None, None, {}, [], receipts, tolerance, max_label_drop)


def _f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 from [..., correct, predicted, true] sums: 2 correct / (predicted + true)."""
    denominator = counts[..., 1] + counts[..., 2]
    return np.where(denominator > 0, 2 * counts[..., 0] / np.maximum(denominator, 1), 0.0)


def count_matrix(counts: dict[str, dict[str, list[int]]], keys: list[str], labels: list[str]) -> np.ndarray:
    """(receipts, labels, 3) array of [correct, predicted, true] entities."""
    return np.array(
        [[counts.get(key, {}).get(label, [0, 0, 0]) for label in labels] for key in keys], dtype=np.int64
    ).reshape(len(keys), len(labels), 3)


def paired_interval(
    candidate: np.ndarray, production: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% interval of candidate minus production micro F1, resampling receipts (rows of (receipts, 3) counts)
    with replacement, the same receipts for both: a seeded paired bootstrap."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(candidate), size=(resamples, len(candidate)))
    differences = _f1(candidate[draws].sum(axis=1)) - _f1(production[draws].sum(axis=1))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def decide_paired(
    candidate_counts: dict[str, dict[str, list[int]]],
    candidate_labels: list[str],
    production: dict | None,
    tolerance: float,
    *,
    max_label_drop: float = 0.05,
    allow_label_change: bool = False,
    resamples: int = RESAMPLES,
) -> PairedDecision:
    """Promote when the lower bound of the 95% interval of candidate minus production F1, on the same receipts,
    is above minus ``tolerance``, and no label with at least MIN_LABEL_SUPPORT true entities drops by more than
    ``max_label_drop``. ``production`` is None (no model yet) or {"labels", "counts"}: the production model's
    label list and its counts on the candidate's receipts. Labels both have are compared; a production model
    with another label set blocks promotion unless ``allow_label_change``."""
    keys = sorted(candidate_counts)
    all_labels = sorted(candidate_labels)
    own = count_matrix(candidate_counts, keys, all_labels).sum(axis=(0, 1))
    candidate_f1 = float(_f1(own))
    common = dict(tolerance=tolerance, max_label_drop=max_label_drop, receipts=len(keys))
    if production is None:
        return PairedDecision(True, "no production model yet", candidate_f1, None, None, None, {}, all_labels, **common)
    shared = sorted(set(candidate_labels) & set(production["labels"]))
    changed = sorted(set(candidate_labels) ^ set(production["labels"]))
    ours = count_matrix(candidate_counts, keys, shared)
    theirs = count_matrix(production["counts"], keys, shared)
    ours_f1, theirs_f1 = float(_f1(ours.sum(axis=(0, 1)))), float(_f1(theirs.sum(axis=(0, 1))))
    interval = paired_interval(ours.sum(axis=1), theirs.sum(axis=1), resamples) if keys else (0.0, 0.0)
    deltas = {}
    for index, label in enumerate(shared):
        mine, yours = float(_f1(ours[:, index].sum(axis=0))), float(_f1(theirs[:, index].sum(axis=0)))
        support = int(ours[:, index, 2].sum())
        deltas[label] = {"candidate": mine, "production": yours, "delta": mine - yours, "support": support}
    decided = dict(
        candidate_f1=ours_f1,
        production_f1=theirs_f1,
        difference=ours_f1 - theirs_f1,
        interval=interval,
        label_deltas=deltas,
        labels_compared=shared,
        **common,
    )
    scores = (
        f"on the same {len(keys)} receipts, F1 {ours_f1:.4f} against production's {theirs_f1:.4f} "
        f"(difference {ours_f1 - theirs_f1:+.4f}, 95% interval {interval[0]:+.4f} to {interval[1]:+.4f})"
    )
    if changed and not allow_label_change:
        reason = (
            f"the production model's labels differ from the candidate's ({', '.join(changed)} in one only): "
            f"promotion needs allow_label_change; {scores} on the {len(shared)} labels both have"
        )
        return PairedDecision(False, reason, **decided)
    if interval[0] <= -tolerance:
        reason = f"not better beyond doubt: {scores}; the lower bound is not above -{tolerance}"
        return PairedDecision(False, reason, **decided)
    dropped = {
        label: d for label, d in deltas.items() if d["support"] >= MIN_LABEL_SUPPORT and d["delta"] < -max_label_drop
    }
    if dropped:
        named = ", ".join(f"{label} {d['delta']:+.3f} (support {d['support']})" for label, d in dropped.items())
        return PairedDecision(False, f"{scores}, but labels drop more than {max_label_drop}: {named}", **decided)
    changed_note = f"; labels changed: {', '.join(changed)}" if changed else ""
    return PairedDecision(True, scores + changed_note, **decided)
