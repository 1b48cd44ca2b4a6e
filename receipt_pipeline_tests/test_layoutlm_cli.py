"""`layoutlm-cli` against the local default: runs recorded in $DAGSTER_HOME, artifacts where the flags say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from receipt_pipeline.core import storage
from receipt_pipeline.layoutlm_cli import JOB_NAME_TAG
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.core.test_checkpoint_scores import PNG_MAGIC, remove_small_run, small_run
from receipt_pipeline_tests.training_data import sroie_subset

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_default(aws_emulator, shared_sroie_dir, module_tmp):
    root = module_tmp("layoutlm-cli")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with seeded_receipts_table(receipts=20, seed=6) as table:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "RECEIPT_PIPELINE_DEPLOYMENT": "local",
            "RECEIPT_PIPELINE_DATA_DIR": str(root / "data"),
            "RECEIPTS_TABLE": "receipts-that-the-flag-overrides",
            "SROIE_DIR": str(_with_an_unreadable_receipt(sroie_subset(shared_sroie_dir, root / "sroie", receipts=30))),
            "HF_HUB_OFFLINE": "1",
        }
        yield {"env": env, "home": home, "data": root / "data", "table": table}


def _with_an_unreadable_receipt(sroie: Path) -> Path:
    (sroie / "train" / "box" / "UNREADABLE.txt").write_bytes(bytes(range(256)) * 4)
    return sroie


def _run_layoutlm_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "receipt_pipeline.layoutlm_cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _layoutlm_cli(env: dict, *args: str, stderr: list | None = None) -> str:
    done = _run_layoutlm_cli(env, *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    if stderr is not None:
        stderr.append(done.stderr)
    return done.stdout


def _runs(home: Path) -> list:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(reversed(instance.get_runs()))


def test_train_with_the_earlier_tools_flags_runs_through_dagster_and_prints_the_run_folder(local_default):
    env, home = local_default["env"], local_default["home"]
    said: list[str] = []
    out = _layoutlm_cli(
        env,
        "train",
        "--job-name", "receipts-v2",
        "--dynamo-table", local_default["table"],
        "--epochs", "3",
        "--batch-size", "4",
        "--lr", "3e-4",
        "--warmup-ratio", "0.05",
        "--gradient-accumulation-steps", "1",
        "--label-smoothing", "0.01",
        "--early-stopping-patience", "2",
        "--pretrained", "compact",
        "--max-steps", "4",
        stderr=said,
    )  # fmt: skip
    # what the data assets could not use is said, counted, with the reason, as their metadata records it
    assert "no_words: 1" in said[0] and "UNREADABLE.txt" in said[0]
    run_folder = local_default["data"] / "runs" / "receipts-v2"
    assert f"run folder: {run_folder}" in out
    assert (run_folder / "best" / "model.safetensors").is_file()
    [run] = _runs(home)
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[JOB_NAME_TAG] == "receipts-v2"
    assert f"dagster run: {run.run_id}" in out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("layoutlm_checkpoint"))
        words = instance.get_latest_materialization_event(dg.AssetKey("raw_receipt_words"))
        sroie = instance.get_latest_materialization_event(dg.AssetKey("sroie_receipts"))
    hyperparameters = event.asset_materialization.metadata["hyperparameters"].value
    assert hyperparameters["learning_rate"] == 3e-4 and hyperparameters["label_smoothing"] == 0.01
    assert hyperparameters["warmup_ratio"] == 0.05 and hyperparameters["early_stopping_patience"] == 2
    assert hyperparameters["epochs"] == 3 and hyperparameters["per_device_batch_size"] == 4
    assert words.asset_materialization.metadata["table"].value == local_default["table"]
    problems = sroie.asset_materialization.metadata["problems"].value
    assert problems > 1 and f"sroie_receipts: {problems} inputs could not be fully used" in said[0]


def test_train_writes_its_run_folder_under_output_s3_path(local_default, artifacts_bucket, tmp_path):
    # its own scratch: a run folder left in the default one by an earlier run would be resumed
    out = _layoutlm_cli(
        {**local_default["env"], "RECEIPT_PIPELINE_SCRATCH": str(tmp_path / "scratch")},
        "train",
        "--job-name", "to-s3",
        "--output-s3-path", f"s3://{artifacts_bucket}/experiments",
        "--max-steps", "2",
    )  # fmt: skip
    assert f"run folder: s3://{artifacts_bucket}/experiments/to-s3" in out
    assert storage.exists(f"s3://{artifacts_bucket}/experiments/to-s3/best/COMPLETE")


def test_sweep_runs_each_trial_as_its_own_run_and_prints_the_best(local_default):
    env, home = local_default["env"], local_default["home"]
    before = len(_runs(home))
    out = _layoutlm_cli(
        env, "sweep", "--study", "cli", "--trials", "2", "--epochs", "3",
        "--lr-min", "1e-4", "--lr-max", "5e-4", "--max-steps", "2",
    )  # fmt: skip
    assert "trial cli-000: validation F1" in out and "trial cli-001: validation F1" in out
    assert "best: cli-00" in out
    runs = _runs(home)[before:]
    assert [run.tags.get("dagster/partition") for run in runs] == ["cli-000", "cli-001", None]
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    again = _layoutlm_cli(env, "sweep", "--study", "cli", "--trials", "1", "--max-steps", "2")
    assert "trial cli-002" in again, "a second sweep of the same study adds trials after the first's"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--pretrained", "/no/such/base-model"], "--pretrained"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "-1"], "--lr"),
    ],
)
def test_a_bad_argument_ends_in_one_line_naming_it_and_no_run(local_default, args, named):
    before = len(_runs(local_default["home"]))
    done = _run_layoutlm_cli(local_default["env"], "train", "--job-name", "bad", *args)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert named in line and args[-1] in line
    assert len(_runs(local_default["home"])) == before


@pytest.fixture(scope="session")
def small_training_run(tmp_path_factory):
    """The tiny run test_checkpoint_scores.py scores (trained once a session, by whichever asks first)."""
    yield small_run(tmp_path_factory)
    remove_small_run(tmp_path_factory)


def _eval_checkpoints_here(*args: str) -> str:
    """The command in this process: scoring needs torch, which a fresh process takes seconds to import."""
    from click.testing import CliRunner

    from receipt_pipeline.layoutlm_cli import main

    done = CliRunner().invoke(main, ["eval-checkpoints", *args])
    assert done.exit_code == 0, done.output
    return done.stdout


def test_eval_checkpoints_prints_the_scores_by_step_marks_the_highest_f1_and_writes_the_files(small_training_run):
    run, _ = small_training_run
    out = _eval_checkpoints_here("--run", str(run))
    folder = run / "checkpoint_scores" / "test"  # the default for a local run
    document = json.loads((folder / "checkpoint_scores.json").read_text())
    rows = [line.split() for line in out.splitlines() if line.startswith(("checkpoint-", "best "))]
    assert [row[0] for row in rows] == ["checkpoint-1", "checkpoint-2", "best"]
    expected = [*document["checkpoints"], document["best"]]
    assert [int(row[1]) for row in rows] == [row["step"] for row in expected]
    assert [row[4] for row in rows] == [f"{row['f1']:.4f}" for row in expected]
    assert [row[0] for row in rows if "highest" in row] == [document["highest_f1"]]
    for name in ("checkpoint_scores.csv", "checkpoint_scores.json", "f1_by_step.png"):
        assert f"  {folder / name}" in out
    assert (folder / "f1_by_step.png").read_bytes().startswith(PNG_MAGIC)


def test_eval_checkpoints_json_on_another_split_with_given_windows_and_output_folder(small_training_run, tmp_path):
    run, _ = small_training_run
    manifest = tmp_path / "windows.json"
    shutil.copyfile(run / "windows_manifest.json", manifest)
    args = ["--run", str(run), "--split", "validation", "--windows", str(manifest), "--output-dir", str(tmp_path)]
    document = json.loads(_eval_checkpoints_here(*args, "--json").strip().splitlines()[-1])
    assert document["split"] == "validation" and document["manifest"] == str(manifest)
    assert [row["step"] for row in document["checkpoints"]] == [1, 2] and document["best"]["checkpoint"] == "best"
    assert document["files"]["csv"] == str(tmp_path / "checkpoint_scores.csv")
    assert json.loads((tmp_path / "checkpoint_scores.json").read_text()) == {
        key: value for key, value in document.items() if key != "files"
    }


def test_eval_checkpoints_ends_in_one_line_naming_a_run_it_cannot_score(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, named in [
        (["--run", str(tmp_path)], f"run folder {tmp_path} has no complete checkpoint"),
        (["--run", str(tmp_path / "absent")], "--run"),
        (["--run", str(tmp_path), "--split", "train"], "--split"),
    ]:
        done = _run_layoutlm_cli(env, "eval-checkpoints", *args)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert named in line


def _infer_here(env: dict, *args: str):
    from click.testing import CliRunner

    from receipt_pipeline.layoutlm_cli import main

    return CliRunner().invoke(main, ["infer", *args], env=env)


def test_infer_prints_one_receipts_words_labels_and_fields_with_the_production_model_by_default(
    receipts_table, small_production_model, tmp_path
):
    from receipt_pipeline.core import promotion
    from receipt_pipeline.core.training import weights_digest
    from receipt_pipeline_tests.core.test_inference import LINES, receipt_items
    from receipt_pipeline_tests.dynamo_items import put_items

    image = "aaaaaaaa-3333-4000-8000-000000000001"
    put_items(receipts_table, receipt_items(image))
    data = tmp_path / "data"
    production = promotion.current_production(str(small_production_model))
    promotion.promote(str(small_production_model), promotion.production_root(str(data)), production)
    env = {"RECEIPT_PIPELINE_DATA_DIR": str(data), "RECEIPTS_TABLE": receipts_table}

    done = _infer_here(env, "--image-id", image, "--receipt-id", "1", "--json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout.strip().splitlines()[-1])
    assert document["model"] == {
        "path": promotion.production_root(str(data)),
        "version": weights_digest(data / "models" / "production"),
    }
    assert document["table"] == receipts_table and document["key"] == f"dynamo/{image}/00001"
    assert [word["text"] for word in document["words"]] == [word for line in LINES for word in line]
    assert all(0 < word["confidence"] <= 1 for word in document["words"])
    assert {"merchant", "address", "date", "time", "total"} <= set(document["fields"])
    assert isinstance(document["line_items"], list) and "status" in document["items_check"]

    text = _infer_here(env, "--image-id", image, "--receipt-id", "1", "--model-dir", str(small_production_model))
    assert text.exit_code == 0, text.output
    assert f"receipt {image} 00001 of table {receipts_table}: 8 words" in text.stdout
    assert "fields:" in text.stdout and "RM9.50" in text.stdout and "confidence" in text.stdout
    assert "line items:" in text.stdout


def test_infer_ends_in_one_line_naming_a_receipt_or_model_it_cannot_use(receipts_table, small_production_model):
    env = {"RECEIPTS_TABLE": receipts_table}
    model = ["--model-dir", str(small_production_model)]
    for args, named in [
        (
            ["--image-id", "aaaaaaaa", "--receipt-id", "3", *model],
            f"table {receipts_table!r} has no receipt aaaaaaaa 3",
        ),
        (["--image-id", "a", "--receipt-id", "1", *model, "--model-s3-uri", "s3://b/m"], "give one"),
        (["--image-id", "a", "--receipt-id", "1", "--model-s3-uri", "/a/folder"], "not an s3:// URI"),
        (["--image-id", "a", "--receipt-id", "0", *model], "--receipt-id"),
    ]:
        done = _infer_here(env, *args)
        assert done.exit_code != 0 and "Traceback" not in done.output, done.output
        [line] = done.output.strip().splitlines()
        assert named in line, line
