"""`receipt-pipeline evaluate` on a checkpoint the pipeline trained, against SROIE-layout folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from receipt_pipeline.core import bio
from receipt_pipeline.core.training import train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.training_data import build_manifest, sroie_frame, sroie_subset


@pytest.fixture(scope="module")
def trained(shared_sroie_dir, module_tmp):
    """A compact checkpoint trained a few steps on 60 SROIE receipts, and a folder of 20 others."""
    root = module_tmp("cli-evaluate")
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


def _one_clear_line(done: subprocess.CompletedProcess, *named: str) -> None:
    """A non-zero exit and one line on stderr naming what is wrong: no traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert all(name in lines[0] for name in named), lines[0]


def test_files_that_cannot_be_used_are_counted_named_and_given_their_reason(trained, shared_sroie_dir, tmp_path):
    checkpoint, held_back = trained
    folder = tmp_path / "sroie" / "train"
    for name in ("box", "entities"):
        (folder / name).mkdir(parents=True)
    good = sorted((held_back / "train" / "box").glob("*.txt"))[:3]
    for box in good:
        (folder / "box" / box.name).symlink_to(box.resolve())
        (folder / "entities" / box.name).symlink_to((held_back / "train" / "entities" / box.name).resolve())
    (folder / "box" / "UNREADABLE.txt").write_bytes(bytes(range(256)) * 8)  # binary, not an OCR file
    (folder / "entities" / "UNREADABLE.txt").write_text('{"company": "X", "total": "1.00"}')
    malformed = folder / "entities" / good[0].name
    malformed.unlink()
    malformed.write_text('{"company": "ACME", "total": ')  # cut short

    done = _evaluate("--checkpoint", checkpoint, "--sroie-dir", str(folder.parent), "--json")

    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    problems = report["problems"]
    assert problems["count"] == len(problems["items"]) == sum(problems["by_reason"].values())
    assert {"non_utf8", "no_words", "unparsable_entities"} <= set(problems["by_reason"])
    assert any("UNREADABLE.txt: no_words" in item for item in problems["items"])
    assert any(f"{good[0].name}: unparsable_entities" in item for item in problems["items"])
    # said on stderr too, counted by reason and named
    assert f"{problems['count']} SROIE files or lines could not be fully used" in done.stderr
    assert "UNREADABLE.txt" in done.stderr and good[0].name in done.stderr
    # the receipts that could be read are scored; the malformed one has no references to score its fields by
    assert report["receipts"] == 3 and report["fields"]["receipts"] == 2


def test_a_checkpoint_that_is_not_there_or_is_no_model_ends_in_one_line_naming_it(trained, tmp_path):
    _, held_back = trained
    missing = str(tmp_path / "no-such-run" / "best")
    _one_clear_line(_evaluate("--checkpoint", missing, "--sroie-dir", str(held_back)), "--checkpoint", missing)
    (tmp_path / "empty").mkdir()
    _one_clear_line(
        _evaluate("--checkpoint", str(tmp_path / "empty"), "--sroie-dir", str(held_back)),
        str(tmp_path / "empty"),
        "model.safetensors",
    )
    nowhere = str(tmp_path / "no-such-sroie")
    checkpoint = trained[0]
    _one_clear_line(_evaluate("--checkpoint", checkpoint, "--sroie-dir", nowhere), "--sroie-dir", nowhere)


def _predict_here(*args: str):
    """`receipt-pipeline predict` in this process: a fresh one takes seconds to import torch."""
    from click.testing import CliRunner

    from receipt_pipeline.cli import main

    return CliRunner().invoke(main, ["predict", *args])


def test_predict_labels_receipts_in_files_least_confident_first_and_names_the_files_it_cannot_read(
    small_production_model, shared_sroie_dir, tmp_path
):
    from receipt_pipeline.core.training import weights_digest

    folder = sroie_subset(shared_sroie_dir, tmp_path / "sroie", receipts=3) / "train"
    for entities in (folder / "entities").iterdir():  # new receipts: nobody annotated them
        entities.unlink()
    (folder / "box" / "UNREADABLE.txt").write_bytes(bytes(range(256)) * 8)

    done = _predict_here("--checkpoint", str(small_production_model), "--sroie-dir", str(folder.parent), "--json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout.strip().splitlines()[-1])
    assert document["model"]["version"] == weights_digest(small_production_model)
    receipts = document["receipts"]
    assert len(receipts) == 3 and [r["review_priority"] for r in receipts] == [1, 2, 3]
    assert all(r["key"].startswith("sroie/") and r["words"] and "total" in r["fields"] for r in receipts)
    assert all(isinstance(r["line_items"], list) and "status" in r["items_check"] for r in receipts)
    confidences = [r["confidence"] for r in receipts]
    assert confidences == sorted(confidences), "least confident first"
    problems = document["problems"]
    assert any("UNREADABLE.txt: no_words" in item for item in problems["items"])
    assert "missing_entity_file" not in problems["by_reason"], "a prediction needs no annotation"
    assert "UNREADABLE.txt" in done.stderr

    text = _predict_here("--checkpoint", str(small_production_model), "--sroie-dir", str(folder))
    assert text.exit_code == 0, text.output
    assert "3 receipts, in review order" in text.stdout and "line item" in text.stdout
    assert all(r["key"] in text.stdout for r in receipts)
