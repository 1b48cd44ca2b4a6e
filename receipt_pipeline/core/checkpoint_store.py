"""A training run's checkpoint folders: complete ones marked, half-written ones removed, and copies under an
``s3://`` prefix (safetensors and JSON only, marker last).

A run folder holds ``checkpoints/checkpoint-<step>/`` as the Trainer writes them and ``best/``. A checkpoint
counts once its ``COMPLETE`` marker is there, written (or uploaded) after every other file, so one cut short
is never resumed from. Optimizer, scheduler and RNG states are pickles and stay local: resuming from S3
restores the weights and the Trainer's progress (step, best metric, early-stopping patience), and the
optimizer's moments start again. A checkpoint on S3 whose weights are pickles only is refused: nothing from
S3 is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from receipt_pipeline.core import storage
from receipt_pipeline.core.base_model import UNSAFE_SUFFIXES
from receipt_pipeline.core.errors import ExplainedError

COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS = "checkpoints"
BEST = "best"
SAFE_SUFFIXES = (".json", ".safetensors", ".txt")


# ------------------------------------------------------------------------------------------ local folders


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    complete = [p for p in checkpoint_dirs(run_dir) if (p / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(run_dir: str | Path) -> list[str]:
    """Checkpoints a crash left half-written: never resumed from, removed before training goes on."""
    removed = []
    for path in checkpoint_dirs(run_dir):
        if not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def mark_complete(folder: Path, payload: dict) -> None:
    """Writes the folder's ``COMPLETE`` marker, atomically: the last file of a checkpoint."""
    tmp = folder / f".{COMPLETE_MARKER}.partial"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, folder / COMPLETE_MARKER)


# ------------------------------------------------------------------------------------------ copies in S3


class CheckpointError(ExplainedError, RuntimeError):
    """A checkpoint on S3 cannot be resumed from; the message names it and the cause."""


def upload_folder(folder: Path, prefix: str) -> list[str]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in SAFE_SUFFIXES)
    uploaded = []
    for path in files:
        uri = storage.join(prefix, path.name)
        storage.write_bytes(uri, path.read_bytes())
        uploaded.append(uri)
    marker = Path(folder) / COMPLETE_MARKER
    if marker.is_file():
        storage.write_bytes(storage.join(prefix, COMPLETE_MARKER), marker.read_bytes())
    return uploaded


class CheckpointSync:
    """``sync(folder, name)`` for :func:`training.train`: copies the folder to ``<run_uri>/<name>/``."""

    def __init__(self, run_uri: str) -> None:
        self.run_uri = run_uri

    def __call__(self, folder: Path, name: str) -> None:
        upload_folder(folder, storage.join(self.run_uri, name))


def complete_remote_checkpoints(run_uri: str) -> dict[int, list[str]]:
    """step -> files of every checkpoint under ``run_uri`` whose marker is there."""
    files: dict[int, list[str]] = {}
    base = run_uri.rstrip("/") + "/"
    for uri in storage.list_files(run_uri):
        parts = uri[len(base) :].split("/")
        if len(parts) == 2 and parts[0].startswith("checkpoint-") and parts[0][11:].isdigit():
            files.setdefault(int(parts[0][11:]), []).append(uri)
    return {step: uris for step, uris in files.items() if any(u.endswith("/" + COMPLETE_MARKER) for u in uris)}


def restore_latest(run_uri: str, run_dir: Path) -> Path | None:
    """Download the newest complete checkpoint of ``run_uri`` into ``run_dir`` (marker last); None if none."""
    complete = complete_remote_checkpoints(run_uri)
    if not complete:
        return None
    step = max(complete)
    names = [uri.rsplit("/", 1)[-1] for uri in complete[step]]
    if not any(name.endswith(".safetensors") for name in names):
        pickled = [name for name in names if name.endswith(UNSAFE_SUFFIXES)]
        found = f"only pickled weights ({', '.join(sorted(pickled))})" if pickled else "no weights"
        raise CheckpointError(
            f"checkpoint {storage.join(run_uri, f'checkpoint-{step}')} has {found}; pickles from S3 are never "
            "loaded: a checkpoint is resumed from its model.safetensors only (delete this one to resume from an "
            "older checkpoint)"
        )
    target = Path(run_dir) / CHECKPOINTS / f"checkpoint-{step}"
    target.mkdir(parents=True, exist_ok=True)
    marker = None
    for uri in complete[step]:
        name = uri.rsplit("/", 1)[-1]
        if name == COMPLETE_MARKER:
            marker = uri
        elif name.endswith(SAFE_SUFFIXES):
            storage.write_bytes(str(target / name), storage.read_bytes(uri))
    storage.write_bytes(str(target / COMPLETE_MARKER), storage.read_bytes(marker))
    return target
