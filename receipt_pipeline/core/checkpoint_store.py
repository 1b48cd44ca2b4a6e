"""Copies of training checkpoints under an ``s3://`` prefix: safetensors and JSON only, marker last.

A checkpoint on S3 counts only once its ``COMPLETE`` marker is there, and the marker is uploaded after
every other file, so an upload cut short is never resumed from. Optimizer, scheduler and RNG states
are pickles and stay local: resuming from S3 restores the weights and the Trainer's progress (step,
best metric, early-stopping patience), and the optimizer's moments start again. A checkpoint on S3
whose weights are pickles only is refused: nothing from S3 is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

from receipt_pipeline.core import storage
from receipt_pipeline.core.base_model import UNSAFE_SUFFIXES
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.training import CHECKPOINTS, COMPLETE_MARKER

SAFE_SUFFIXES = (".json", ".safetensors", ".txt")


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
