"""`receipt-pipeline evaluate` on a checkpoint the pipeline trained, against SROIE-layout folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from receipt_pipeline.core import bio
from receipt_pipeline.core.training import TrainingOptions, train
from receipt_pipeline_tests.training_data import build_manifest, sroie_frame, sroie_subset


@pytest.fixture(scope="module")
def trained(shared_sroie_dir, tmp_path_factory):
    """A compact checkpoint trained a few steps on 60 SROIE receipts, and a folder of 20 others."""
    root = tmp_path_factory.mktemp("cli-evaluate")
    train_dir = sroie_subset(shared_sroie_dir, root / "sroie-train", receipts=60)
    manifest, _ = build_manifest([sroie_frame(train_dir)], root / "windows", bio.SplitOptions())
    options = TrainingOptions(max_steps=4, eval_steps=4, per_device_batch_size=4, gradient_accumulation_steps=1)
    result = train(manifest, root / "run", options)
    held_back = root / "held-back"
    for folder in ("box", "entities"):
        (held_back / "train" / folder).mkdir(parents=True)
    boxes = sorted((shared_sroie_dir / "train" / "box").glob("*.txt"))[60:80]
    for box in boxes:
        (held_back / "train" / "box" / box.name).symlink_to(box)
        (held_back / "train" / "entities" / box.name).symlink_to(shared_sroie_dir / "train" / "entities" / box.name)
    return result.best_dir, held_back


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "receipt_pipeline.cli", "evaluate", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_json_output_has_field_and_entity_f1_for_a_folder_of_splits_or_one_split(trained):
    checkpoint, held_back = trained
    outputs = []
    for folder in (held_back, held_back / "train"):
        done = _evaluate("--checkpoint", checkpoint, "--sroie-dir", str(folder), "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1], "the folder and its only split are the same receipts"
    report = outputs[0]
    assert 0.0 <= report["field_f1"] <= 1.0 and 0.0 <= report["entity_f1"] <= 1.0
    assert report["receipts"] == 20 and report["fields"]["receipts"] == 20
    assert set(report["fields"]["per_field"]) == {"company", "date", "address", "total"}


def test_markdown_output_and_a_clear_error_for_a_folder_without_receipts(trained, tmp_path):
    checkpoint, held_back = trained
    done = _evaluate("--checkpoint", checkpoint, "--sroie-dir", str(held_back))
    assert done.returncode == 0 and "SROIE field-level exact match" in done.stdout
    empty = _evaluate("--checkpoint", checkpoint, "--sroie-dir", str(tmp_path))
    assert empty.returncode != 0 and "no SROIE split" in empty.stderr
