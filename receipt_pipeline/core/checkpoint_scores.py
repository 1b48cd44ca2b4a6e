"""Every checkpoint of a training run scored on the same frozen windows: the entity F1 by step.

A run folder (local, or its ``s3://`` copy) holds ``checkpoint-<step>/`` folders (under ``checkpoints/``
locally, at the top on S3), ``best/`` and ``windows_manifest.json``, the windows it trained on. Each complete
checkpoint (its ``COMPLETE`` marker there) is scored on one split of those windows, and ``best`` beside them:
on the test split, rather than the validation split the Trainer selected on, the scores show where the run
peaked and whether the model kept is the one to ship.

The scores are seqeval's, strict IOB2, after merging windows and repairing BIO, as :mod:`evaluation` computes
them (overall and per label). Entity scores only: field F1 needs each receipt's words and reference values,
and the windows hold token ids alone. ``best`` carries the O offset that validation chose (``COMPLETE``'s
``outside_offset``) in its weights, the checkpoints do not: best can score otherwise than the checkpoint of
its step.

An ``s3://`` run is read one checkpoint at a time, its safetensors and JSON files only (nothing pickled is
ever fetched), into a temporary folder removed once it is scored.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from receipt_pipeline.core import checkpoint_store, storage
from receipt_pipeline.core.errors import ExplainedError

SPLITS = ("test", "validation")
CSV_FILE = "checkpoint_scores.csv"
JSON_FILE = "checkpoint_scores.json"
PLOT_FILE = "f1_by_step.png"
CSV_COLUMNS = ("checkpoint", "step", "precision", "recall", "f1", "support")


class CheckpointScoresError(ExplainedError, ValueError):
    """A run's checkpoints cannot be scored; the message names the run folder or checkpoint and the problem."""


@dataclass
class CheckpointScore:
    checkpoint: str  # checkpoint-<step>, or best
    step: int
    precision: float
    recall: float
    f1: float
    support: int  # true entities in the split
    per_label: dict = field(default_factory=dict)


@dataclass
class CheckpointScores:
    run: str
    split: str
    manifest: str  # where the windows' manifest was read
    receipts: int
    windows: int
    rows: list[CheckpointScore]  # every complete checkpoint, by step
    best: CheckpointScore | None  # the run's best/, if it has one
    skipped: list[str] = field(default_factory=list)  # checkpoints (and best) without a COMPLETE marker

    def highest(self) -> CheckpointScore:
        """The row of the highest F1: of equal ones ``best`` (the model kept), else the earliest checkpoint."""
        candidates = ([self.best] if self.best else []) + self.rows
        return max(candidates, key=lambda row: row.f1)  # max keeps the first of equal ones

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "split": self.split,
            "manifest": self.manifest,
            "receipts": self.receipts,
            "windows": self.windows,
            "checkpoints": [asdict(row) for row in self.rows],
            "best": asdict(self.best) if self.best else None,
            "highest_f1": self.highest().checkpoint,
            "skipped": list(self.skipped),
        }


# ------------------------------------------------------------------------------------------ the run folder


def read_manifest(run: str, manifest: str | None = None) -> tuple[dict, str]:
    """The windows' manifest and where it was read: ``manifest`` if given (a JSON file or ``s3://`` object),
    else the run folder's ``windows_manifest.json``."""
    from receipt_pipeline.core.training import WINDOWS_MANIFEST  # here: the command's --help needs no trainer

    uri = manifest or storage.join(run, WINDOWS_MANIFEST)
    if not storage.exists(uri):
        if manifest:
            raise CheckpointScoresError(f"windows manifest {manifest}: no such file")
        raise CheckpointScoresError(
            f"run folder {run} has no {WINDOWS_MANIFEST} (runs trained before it was written have none): pass "
            "the manifest of the windows it trained on (windowed_tensors.json under the artifacts' assets/)"
        )
    try:
        document = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointScoresError(f"windows manifest {uri}: not JSON ({error})") from None
    missing = [key for key in ("folder", "tags", "splits") if not isinstance(document, dict) or key not in document]
    if missing:
        raise CheckpointScoresError(f"windows manifest {uri}: no {', '.join(missing)}; not a windows manifest")
    return document, uri


@dataclass
class _Checkpoint:
    name: str
    step: int
    location: str  # a local folder, or the s3:// prefix
    files: list[str]  # on S3, the objects under it; locally empty


def find_checkpoints(run: str) -> tuple[list[_Checkpoint], _Checkpoint | None, list[str]]:
    """The run's complete checkpoints by step, its complete ``best`` (or None), and the names of the
    checkpoints (and best) without a marker. :class:`CheckpointScoresError` when no checkpoint is complete."""
    if storage.is_s3(run):
        found, best, skipped = _remote_checkpoints(run)
    else:
        if not Path(run).is_dir():
            raise CheckpointScoresError(f"run folder {run}: no such folder")
        found, best, skipped = _local_checkpoints(Path(run))
    if not found:
        also = f" ({', '.join(skipped)} not marked COMPLETE)" if skipped else ""
        raise CheckpointScoresError(f"run folder {run} has no complete checkpoint{also}: nothing to score")
    return sorted(found, key=lambda c: c.step), best, skipped


def _local_checkpoints(run: Path) -> tuple[list[_Checkpoint], _Checkpoint | None, list[str]]:
    # a run's own folder has checkpoints/checkpoint-<step>; a copy of its S3 folder has them at the top
    folders = checkpoint_store.checkpoint_dirs(run) or [
        p for p in sorted(run.glob("checkpoint-*")) if p.is_dir() and p.name.split("-")[-1].isdigit()
    ]
    complete = [p for p in folders if (p / checkpoint_store.COMPLETE_MARKER).is_file()]
    found = [_Checkpoint(p.name, int(p.name.split("-")[-1]), str(p), []) for p in complete]
    skipped = [p.name for p in folders if p not in complete]
    best_dir = run / checkpoint_store.BEST
    best = None
    if (best_dir / checkpoint_store.COMPLETE_MARKER).is_file():
        marker = (best_dir / checkpoint_store.COMPLETE_MARKER).read_bytes()
        best = _Checkpoint(checkpoint_store.BEST, _marker_step(marker, str(best_dir)), str(best_dir), [])
    elif best_dir.is_dir():
        skipped.append(checkpoint_store.BEST)
    return found, best, skipped


def _remote_checkpoints(run: str) -> tuple[list[_Checkpoint], _Checkpoint | None, list[str]]:
    complete = checkpoint_store.complete_remote_checkpoints(run)
    found = [
        _Checkpoint(f"checkpoint-{step}", step, storage.join(run, f"checkpoint-{step}"), files)
        for step, files in complete.items()
    ]
    base = run.rstrip("/") + "/"
    folders: dict[str, list[str]] = {}
    for uri in storage.list_files(run):
        parts = uri[len(base) :].split("/")
        if len(parts) == 2:
            folders.setdefault(parts[0], []).append(uri)
    started = [name for name in folders if name.startswith("checkpoint-") and name[11:].isdigit()]
    skipped = sorted((name for name in started if int(name[11:]) not in complete), key=lambda name: int(name[11:]))
    best = None
    best_uri = storage.join(run, checkpoint_store.BEST)
    marker = storage.join(best_uri, checkpoint_store.COMPLETE_MARKER)
    if marker in folders.get(checkpoint_store.BEST, []):
        step = _marker_step(storage.read_bytes(marker), best_uri)
        best = _Checkpoint(checkpoint_store.BEST, step, best_uri, folders[checkpoint_store.BEST])
    elif checkpoint_store.BEST in folders:
        skipped.append(checkpoint_store.BEST)
    return found, best, skipped


def _marker_step(marker: bytes, location: str) -> int:
    try:
        return int(json.loads(marker)["step"])
    except (ValueError, KeyError, TypeError):
        marker_name = checkpoint_store.COMPLETE_MARKER
        raise CheckpointScoresError(f"checkpoint {location}: its {marker_name} marker names no step") from None


@contextmanager
def _local_folder(checkpoint: _Checkpoint) -> Iterator[Path]:
    """The checkpoint's folder on this machine; an S3 one downloaded (safe files only) for as long as it is used."""
    if not checkpoint.files:
        yield Path(checkpoint.location)
        return
    with tempfile.TemporaryDirectory(prefix="receipt-pipeline-checkpoint-") as work:
        for uri in checkpoint.files:
            name = uri.rsplit("/", 1)[-1]
            if name.endswith(checkpoint_store.SAFE_SUFFIXES):
                storage.write_bytes(str(Path(work) / name), storage.read_bytes(uri))
        yield Path(work)


def _check_folder(folder: Path, location: str, tags: list[str], manifest_uri: str) -> None:
    if not (folder / "model.safetensors").is_file():
        raise CheckpointScoresError(
            f"checkpoint {location} has no model.safetensors: weights are read from safetensors only"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        id2label = config["id2label"]
        saved = [id2label[str(i)] for i in range(len(id2label))]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointScoresError(f"checkpoint {location}: no readable label list in config.json ({error})") from None
    if saved != tags:
        raise CheckpointScoresError(
            f"checkpoint {location} predicts the tags {saved}, but the windows of {manifest_uri} are tagged {tags}: "
            "score it on the windows it was trained on"
        )


# ------------------------------------------------------------------------------------------ scoring


def score_checkpoints(
    run: str,
    split: str = "test",
    manifest: str | None = None,
    *,
    device: str | None = None,
    on_scored: Callable[[CheckpointScore], None] | None = None,
) -> CheckpointScores:
    """Every complete checkpoint of ``run`` (a folder or ``s3://`` prefix), and its ``best``, scored on ``split``
    of the run's windows (``manifest``, a manifest file, overrides the run's own). ``device``: default a GPU
    where there is one. ``on_scored`` is told each score as it is found."""
    from botocore.exceptions import ClientError

    from receipt_pipeline.core.windows import WindowSet

    run = run.rstrip("/") if storage.is_s3(run) else str(Path(run).expanduser())
    if split not in SPLITS:
        raise CheckpointScoresError(f"split {split!r}: checkpoints are scored on {' or '.join(SPLITS)}")
    checkpoints, best, skipped = find_checkpoints(run)
    document, manifest_uri = read_manifest(run, manifest)
    if split not in document["splits"]:
        raise CheckpointScoresError(f"windows manifest {manifest_uri} has no {split} split")
    try:
        windows = WindowSet(document, split)
    except (FileNotFoundError, ClientError) as error:
        raise CheckpointScoresError(
            f"windows manifest {manifest_uri}: cannot read the {split} shards under {document['folder']} ({error})"
        ) from None
    if not len(windows):
        raise CheckpointScoresError(f"windows manifest {manifest_uri}: its {split} split has no windows")

    from receipt_pipeline.core.evaluation import true_receipt_tags

    truth = true_receipt_tags(windows)
    device = device or _default_device()
    rows = []
    for checkpoint in [*checkpoints, *([best] if best else [])]:
        with _local_folder(checkpoint) as folder:
            _check_folder(folder, checkpoint.location, windows.tags, manifest_uri)
            score = _score(folder, checkpoint, windows, truth, device)
        rows.append(score)
        if on_scored:
            on_scored(score)
    best_score = rows.pop() if best else None
    return CheckpointScores(
        run=run,
        split=split,
        manifest=manifest_uri,
        receipts=len(truth),
        windows=len(windows),
        rows=rows,
        best=best_score,
        skipped=skipped,
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _score(folder: Path, checkpoint: _Checkpoint, windows, truth: dict, device: str) -> CheckpointScore:
    from receipt_pipeline.core.evaluation import entity_scores, load_classifier, predict, receipt_tags

    model = load_classifier(str(folder)).to(device)
    # a Trainer checkpoint has no tokenizer beside it; padding is masked out, so the id only has to be one the
    # embedding has, and the config's is the base model's own
    pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    predicted = receipt_tags(windows, predict(model, windows, pad_token_id))
    del model  # one model in memory at a time
    scores = entity_scores(truth, predicted)
    overall = scores["overall"]
    return CheckpointScore(
        checkpoint=checkpoint.name,
        step=checkpoint.step,
        precision=overall["precision"],
        recall=overall["recall"],
        f1=overall["f1"],
        support=overall["support"],
        per_label=scores["per_label"],
    )


# ------------------------------------------------------------------------------------------ the files


def default_output_dir(run: str, split: str) -> str:
    """``<run>/checkpoint_scores/<split>`` for a local run; ``./checkpoint_scores/<run name>/<split>`` for an
    ``s3://`` one, so that scoring never writes into a bucket unasked."""
    if storage.is_s3(run):
        return str(Path("checkpoint_scores") / PurePosixPath(run.rstrip("/")).name / split)
    return str(Path(run).expanduser() / "checkpoint_scores" / split)


def csv_text(scores: CheckpointScores) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in [*scores.rows, *([scores.best] if scores.best else [])]:
        writer.writerow({name: getattr(row, name) for name in CSV_COLUMNS})
    return buffer.getvalue()


def f1_by_step_png(scores: CheckpointScores) -> bytes:
    """Entity F1 by step (precision and recall beside it, fainter), ``best`` as a star at its step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from receipt_pipeline.core.evaluation import figure_png

    steps = [row.step for row in scores.rows]
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    axes.plot(steps, [row.f1 for row in scores.rows], marker="o", color="#3b75af", label="F1")
    axes.plot(steps, [row.precision for row in scores.rows], ls="--", lw=1, color="#8fb3d9", label="precision")
    axes.plot(steps, [row.recall for row in scores.rows], ls=":", lw=1, color="#8fb3d9", label="recall")
    if scores.best:
        best = scores.best
        axes.plot([best.step], [best.f1], marker="*", ms=14, ls="", color="#d9822b", label=f"best (F1 {best.f1:.3f})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("step")
    axes.set_ylabel("entity score (strict IOB2)")
    run = PurePosixPath(scores.run.rstrip("/")).name
    title = f"{run}, {scores.split} split: {scores.receipts} receipts, {scores.windows} windows"
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return figure_png(figure, dpi=90)


def write_scores(scores: CheckpointScores, output_dir: str) -> dict[str, str]:
    """``checkpoint_scores.csv``, ``checkpoint_scores.json`` and ``f1_by_step.png`` in ``output_dir`` (a folder
    or ``s3://`` prefix): name -> where."""
    files = {
        "csv": storage.join(output_dir, CSV_FILE),
        "json": storage.join(output_dir, JSON_FILE),
        "plot": storage.join(output_dir, PLOT_FILE),
    }
    storage.write_bytes(files["csv"], csv_text(scores).encode())
    storage.write_bytes(files["json"], json.dumps(scores.to_dict(), indent=2).encode())
    storage.write_bytes(files["plot"], f1_by_step_png(scores))
    return files
