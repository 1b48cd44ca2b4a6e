"""Every checkpoint of a real (tiny) training run scored on the windows it trained on, locally and on S3."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from receipt_pipeline.core import bio, checkpoint_scores, storage
from receipt_pipeline.core.base_model import UNSAFE_SUFFIXES
from receipt_pipeline.core.checkpoint_scores import CheckpointScoresError, score_checkpoints
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER, CheckpointSync, checkpoint_dirs, upload_folder
from receipt_pipeline.core.evaluation import evaluate
from receipt_pipeline.core.training import WINDOWS_MANIFEST, train, write_windows_manifest
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.training_data import build_manifest, synthetic_words

# checkpoints at steps 1 and 2; float32, as evaluate computes, so that its scores and these compare exactly
SMALL_RUN = TrainingOptions(
    max_steps=2,
    eval_steps=1,
    per_device_batch_size=4,
    gradient_accumulation_steps=1,
    warmup_ratio=0.0,
    mixed_precision=False,
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_run(tmp_path_factory) -> tuple[Path, dict]:
    """A compact model's run folder of 2 steps (checkpoints 1 and 2, best) and the manifest it was given.

    Trained once a session: this module's fixture and test_layoutlm_cli.py's share it on disk, the first to
    ask trains it (about half a minute on a CPU)."""
    root = tmp_path_factory.getbasetemp() / "checkpoint-scores-run"
    run, given = root / "run", root / "given_manifest.json"
    if not (run / "best" / COMPLETE_MARKER).is_file() or not given.is_file():
        shutil.rmtree(root, ignore_errors=True)
        manifest, _ = build_manifest([synthetic_words(40)], root / "windows", bio.SplitOptions(entity_share_target=0.7))
        train(manifest, run, SMALL_RUN)
        # the optimizer's and RNG's pickles are for resuming: hundreds of MB the scoring never reads
        for path in run.glob("checkpoints/*/*"):
            if path.name.endswith(UNSAFE_SUFFIXES):
                path.unlink()
        given.write_text(json.dumps(manifest))
    return run, json.loads(given.read_text())


def remove_small_run(tmp_path_factory) -> None:
    shutil.rmtree(tmp_path_factory.getbasetemp() / "checkpoint-scores-run", ignore_errors=True)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    yield small_run(tmp_path_factory)
    remove_small_run(tmp_path_factory)


def _linked_run(run: Path, target: Path, *, manifest: bool = True, incomplete: str | None = None) -> Path:
    """A run folder of links to ``run``'s checkpoints and best, with ``incomplete`` a checkpoint of every file
    but the marker (one being written), and without the manifest unless ``manifest``."""
    (target / "checkpoints").mkdir(parents=True)
    for folder in checkpoint_dirs(run):
        (target / "checkpoints" / folder.name).symlink_to(folder)
    (target / "best").symlink_to(run / "best")
    if manifest:
        (target / WINDOWS_MANIFEST).symlink_to(run / WINDOWS_MANIFEST)
    if incomplete:
        first = checkpoint_dirs(run)[0]
        (target / "checkpoints" / incomplete).mkdir()
        for path in first.iterdir():
            if path.name != COMPLETE_MARKER:
                (target / "checkpoints" / incomplete / path.name).symlink_to(path)
    return target


@pytest.fixture(scope="module")
def scored(trained_run, module_tmp):
    run, _ = trained_run
    linked = _linked_run(run, module_tmp("linked-run") / "run", incomplete="checkpoint-3")
    return linked, score_checkpoints(str(linked), "test", device="cpu")


def test_train_writes_the_manifest_it_was_given_in_the_run_folder(trained_run):
    run, manifest = trained_run
    assert json.loads((run / WINDOWS_MANIFEST).read_text()) == manifest
    assert not list(run.glob(f".{WINDOWS_MANIFEST}*")), "written beside its target and renamed into place"


def test_a_synced_run_gets_the_manifest_beside_its_checkpoints_on_s3(trained_run, artifacts_bucket, tmp_path):
    _, manifest = trained_run
    run_uri = f"s3://{artifacts_bucket}/runs/synced"
    write_windows_manifest(manifest, tmp_path, CheckpointSync(run_uri))
    assert json.loads(storage.read_bytes(f"{run_uri}/{WINDOWS_MANIFEST}")) == manifest
    assert json.loads((tmp_path / WINDOWS_MANIFEST).read_text()) == manifest

    called = []
    write_windows_manifest(manifest, tmp_path / "other", lambda folder, name: called.append(name))
    assert called == [], "a sync of folders is not asked to copy a file of the run folder"


def test_every_complete_checkpoint_is_scored_by_step_as_evaluation_scores_it(scored, trained_run):
    linked, scores = scored
    run, manifest = trained_run
    assert [row.step for row in scores.rows] == [1, 2]
    assert [row.checkpoint for row in scores.rows] == ["checkpoint-1", "checkpoint-2"]
    assert scores.skipped == ["checkpoint-3"], "a checkpoint being written (no marker yet) is not scored"
    assert scores.manifest == str(linked / WINDOWS_MANIFEST) and scores.split == "test"
    best_step = json.loads((run / "best" / COMPLETE_MARKER).read_text())["step"]
    assert scores.best.checkpoint == "best" and scores.best.step == best_step

    for row, folder in [*zip(scores.rows, checkpoint_dirs(run), strict=True), (scores.best, run / "best")]:
        report = evaluate(str(folder), manifest, split="test")
        overall = report.entity["overall"]
        assert (row.precision, row.recall, row.f1, row.support) == pytest.approx(
            (overall["precision"], overall["recall"], overall["f1"], overall["support"])
        ), row.checkpoint
        assert row.per_label == report.entity["per_label"]
        assert scores.receipts == report.receipts and scores.windows == report.windows
    assert scores.receipts > 0 and scores.rows[0].support > 0


def test_the_table_json_and_plot_are_written(scored, tmp_path):
    _, scores = scored
    files = checkpoint_scores.write_scores(scores, str(tmp_path / "out"))
    assert files == {
        "csv": str(tmp_path / "out" / "checkpoint_scores.csv"),
        "json": str(tmp_path / "out" / "checkpoint_scores.json"),
        "plot": str(tmp_path / "out" / "f1_by_step.png"),
    }
    rows = list(csv.DictReader(io.StringIO(Path(files["csv"]).read_text())))
    assert [row["checkpoint"] for row in rows] == ["checkpoint-1", "checkpoint-2", "best"]
    assert [float(row["f1"]) for row in rows] == [r.f1 for r in [*scores.rows, scores.best]]
    document = json.loads(Path(files["json"]).read_text())
    assert [row["step"] for row in document["checkpoints"]] == [1, 2]
    assert document["best"]["f1"] == scores.best.f1 and document["highest_f1"] == scores.highest().checkpoint
    assert document["skipped"] == ["checkpoint-3"]
    png = Path(files["plot"]).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_an_s3_run_is_read_without_its_pickles_and_scored_as_its_local_copy(
    scored, trained_run, artifacts_bucket, monkeypatch, tmp_path
):
    _, local = scored
    run, manifest = trained_run
    run_uri = f"s3://{artifacts_bucket}/runs/on-s3"
    first = checkpoint_dirs(run)[0]
    upload_folder(first, f"{run_uri}/{first.name}")
    storage.write_bytes(f"{run_uri}/{first.name}/optimizer.pt", b"a pickle that must never be fetched")
    storage.write_bytes(f"{run_uri}/checkpoint-9/model.safetensors", b"an upload cut short: no marker")
    write_windows_manifest(manifest, tmp_path, CheckpointSync(run_uri))

    read = []
    original = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: read.append(uri) or original(uri))
    scores = score_checkpoints(run_uri, "test", device="cpu")

    assert scores.rows == [local.rows[0]] and scores.best is None
    assert scores.skipped == ["checkpoint-9"] and scores.manifest == f"{run_uri}/{WINDOWS_MANIFEST}"
    assert not [uri for uri in read if uri.endswith(UNSAFE_SUFFIXES)]
    assert checkpoint_scores.default_output_dir(run_uri, "test") == str(Path("checkpoint_scores", "on-s3", "test"))


def test_a_run_without_a_manifest_is_refused_and_a_given_one_overrides_the_runs(scored, trained_run, tmp_path):
    run, manifest = trained_run
    bare = _linked_run(run, tmp_path / "bare", manifest=False)
    with pytest.raises(CheckpointScoresError, match=re.escape(f"run folder {bare} has no {WINDOWS_MANIFEST}")):
        score_checkpoints(str(bare), "test", device="cpu")
    with pytest.raises(CheckpointScoresError, match=re.escape("windows manifest /no/such.json: no such file")):
        score_checkpoints(str(bare), "test", "/no/such.json", device="cpu")

    # windows of another label list than the checkpoints', given for a run that has its own manifest: they are
    # the ones read, and refused before any model is loaded, naming the checkpoint
    linked, _ = scored
    other = dict(manifest, tags=[manifest["tags"][0], *reversed(manifest["tags"][1:])])
    (tmp_path / "other.json").write_text(json.dumps(other))
    first = checkpoint_dirs(linked)[0]
    with pytest.raises(CheckpointScoresError, match=re.escape(f"checkpoint {first} predicts the tags")):
        score_checkpoints(str(linked), "test", str(tmp_path / "other.json"), device="cpu")


def test_a_run_with_no_complete_checkpoint_is_refused_naming_it(tmp_path):
    only_incomplete = tmp_path / "only-incomplete"
    (only_incomplete / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (only_incomplete / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"partial")
    named = re.escape(f"run folder {only_incomplete} has no complete checkpoint (checkpoint-2 not marked COMPLETE)")
    with pytest.raises(CheckpointScoresError, match=named):
        score_checkpoints(str(only_incomplete))
    with pytest.raises(CheckpointScoresError, match="no such folder"):
        score_checkpoints(str(tmp_path / "absent"))
