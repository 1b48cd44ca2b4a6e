"""Training under torchrun: two CPU processes (gloo) against one process on the same batches."""

from __future__ import annotations

import json

import pytest

from receipt_pipeline.core import bio, distributed
from receipt_pipeline.core.training import TrainingError, train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.training_data import SAME_BATCHES, build_manifest, synthetic_words

# a step of the same 4 windows: two processes of 2 each, or one process accumulating two micro-batches of 2. Not
# one batch of 4: padding 4 windows to the longest of them moves the first gradient's norm by a fifth here
# (1.94 against 1.51 on the same windows and weights), in one process as much as in two, so it would measure
# the padding, not the processes.
ONE_PASS = dict(SAME_BATCHES, gradient_accumulation_steps=1)


@pytest.fixture(scope="module")
def manifest(module_tmp):
    folder = module_tmp("windows")
    manifest, _ = build_manifest([synthetic_words(40)], folder / "windows", bio.SplitOptions(entity_share_target=0.7))
    return manifest


def _losses(run_dir) -> dict:
    history = json.loads((run_dir / "best" / "trainer_state.json").read_text())["log_history"]
    return {
        "train": [entry["loss"] for entry in history if "loss" in entry],
        "validation": [entry["eval_loss"] for entry in history if "eval_loss" in entry],
    }


def test_two_gloo_processes_under_torchrun_match_single_process_training(manifest, tmp_path):
    # six full batches of 4 within the first epoch: no short last batch, which DDP would pad with repeats
    assert manifest["splits"]["train"]["windows"] >= 6 * 4
    accumulated = {**ONE_PASS, "gradient_accumulation_steps": 2}
    single = train(manifest, tmp_path / "single", TrainingOptions(per_device_batch_size=2, **accumulated))
    two = distributed.train_distributed(
        manifest, tmp_path / "two", TrainingOptions(per_device_batch_size=2, **ONE_PASS), processes=2
    )
    assert two.steps == single.steps == 6 and two.device == "cpu"
    # the same windows went through the model: the token count is summed over both processes
    assert two.real_tokens == single.real_tokens
    # every step's loss and the validation loss after the last step agree within 1%, while training
    # moved the loss by far more than that (Adam's first steps amplify float noise in near-zero gradients,
    # so single weights are not compared)
    one_process, two_processes = _losses(tmp_path / "single"), _losses(tmp_path / "two")
    assert len(one_process["train"]) == len(two_processes["train"]) == 6
    assert two_processes["train"] == pytest.approx(one_process["train"], rel=0.01)
    assert two_processes["validation"] == pytest.approx(one_process["validation"], rel=0.01)
    assert single.first_loss > 1.15 * single.last_loss  # six steps on 40 receipts: it learns
    assert json.loads((tmp_path / "two" / "best" / "COMPLETE").read_text())["step"] == 6


def test_without_a_gpu_one_process_is_used_unless_more_are_asked_for():
    assert distributed.processes_per_node() == 1
    assert distributed.processes_per_node(4) == 4
    command = distributed.torchrun_command(distributed.Path("/runs/r/job.json"), 8)
    assert command[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
        "-m", "receipt_pipeline.core.distributed", "/runs/r/job.json",
    ]  # fmt: skip


def test_a_failing_process_fails_the_run_with_its_error(manifest, tmp_path):
    broken = dict(manifest, tokenizer={**manifest["tokenizer"], "fingerprint": "not-this-tokenizer"})
    with pytest.raises(TrainingError, match="another tokenizer .* rebuild windowed_tensors"):
        distributed.train_distributed(broken, tmp_path / "run", TrainingOptions(max_steps=2), processes=2)
