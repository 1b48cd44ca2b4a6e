"""The production model: a checkpoint copied to one stable place when its F1 holds up against the current one.

The stable place (``s3://<bucket>/models/production`` or a local folder) holds the model's files and
``production.json``, which says what the model is: its checkpoint, data versions, report and scores.
``production.json`` is removed before a copy starts and written after every other file, so a copy cut
short leaves no folder that claims to be a production model.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from receipt_pipeline.core import storage
from receipt_pipeline.core.errors import ExplainedError

MANIFEST = "production.json"
METRIC = "entity_f1"  # seqeval strict IOB2, present in every report (field F1 needs SROIE test receipts)
MODEL_SUFFIXES = (".json", ".safetensors", ".txt")
COMPLETE_MARKER = "COMPLETE"


class PromotionError(ExplainedError, RuntimeError):
    pass


@dataclass(frozen=True)
class Decision:
    passed: bool
    candidate_f1: float
    production_f1: float | None
    tolerance: float
    reason: str


def current_production(root: str) -> dict | None:
    """The manifest of the production model under ``root``, or None when none was promoted yet."""
    manifest = storage.join(root, MANIFEST)
    if not storage.exists(manifest):
        return None
    return json.loads(storage.read_bytes(manifest))


def decide(candidate_f1: float, production: dict | None, tolerance: float) -> Decision:
    """Promote unless the candidate's F1 is lower than production's by more than ``tolerance``."""
    if production is None:
        return Decision(True, candidate_f1, None, tolerance, "no production model yet")
    current = float(production["scores"][METRIC])
    drop = current - candidate_f1
    if drop > tolerance:
        reason = (
            f"{METRIC} {candidate_f1:.4f} is {drop:.4f} below the production model's {current:.4f} "
            f"(checkpoint {production['checkpoint'].get('version', '?')}), more than the tolerance {tolerance}"
        )
        return Decision(False, candidate_f1, current, tolerance, reason)
    return Decision(
        True, candidate_f1, current, tolerance, f"{METRIC} {candidate_f1:.4f} against production's {current:.4f}"
    )


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
