"""A batch that does not fit the device's memory trains as the same optimizer batch in micro-batches, or is
refused before training; the estimate it plans on is not below what a training step takes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from receipt_pipeline.core import bio, memory
from receipt_pipeline.core.training import build_trainer
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.training_data import build_manifest, synthetic_words

GIB = memory.GIB


def test_a_batch_that_fits_is_kept_and_one_that_does_not_is_split_into_micro_batches_of_the_same_total():
    fits = memory.plan_batch(4, 1, bytes_per_window=GIB // 4, fixed_bytes=GIB, free_bytes=20 * GIB)
    assert (fits.per_device_batch_size, fits.gradient_accumulation_steps) == (4, 1)
    # the earlier tool's --batch-size 192 on 24 GiB: 192 windows of about 0.27 GiB each do not fit
    split = memory.plan_batch(192, 1, bytes_per_window=int(0.27 * GIB), fixed_bytes=GIB, free_bytes=20 * GIB)
    assert split.per_device_batch_size * split.gradient_accumulation_steps == 192
    assert split.per_device_batch_size <= split.windows_that_fit < 192
    assert split.per_device_batch_size * split.bytes_per_window + split.fixed_bytes <= memory.HEADROOM * 20 * GIB
    assert "runs as" in split.describe(192, 1) and "192 windows an optimizer step" in split.describe(192, 1)
    # an accumulation the user asked for is kept, multiplied
    accumulated = memory.plan_batch(64, 2, bytes_per_window=GIB, fixed_bytes=0, free_bytes=20 * GIB)
    assert accumulated.per_device_batch_size * accumulated.gradient_accumulation_steps == 128
    # a prime batch still divides exactly: one window a micro-batch
    prime = memory.plan_batch(13, 1, bytes_per_window=GIB, fixed_bytes=0, free_bytes=8 * GIB)
    assert (prime.per_device_batch_size, prime.gradient_accumulation_steps) == (1, 13)


def test_a_model_that_does_not_fit_beside_one_window_is_refused_saying_what_it_needs_and_what_is_free():
    with pytest.raises(memory.BatchMemoryError, match=r"needs about 13\.0 GiB .* 10\.0 GiB"):
        memory.plan_batch(8, 1, bytes_per_window=GIB, fixed_bytes=12 * GIB, free_bytes=10 * GIB)


def test_the_trainer_gets_the_planned_micro_batches_for_the_earlier_tools_batch_of_192(tmp_path):
    manifest = build_manifest([synthetic_words(8)], tmp_path / "windows", bio.SplitOptions())[0]
    trainer, _, _ = build_trainer(manifest, tmp_path / "run", TrainingOptions(per_device_batch_size=192).resolved())
    args = trainer.args
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 192
    planned = memory.plan_for_model(trainer.model, 192, 1, manifest["window"]["max_length"], cuda=False)
    assert args.per_device_train_batch_size == planned.per_device_batch_size <= planned.windows_that_fit
    assert trainer.batch_plan == planned.describe(192, 1)
    print(trainer.batch_plan)


MEASURE = """
import json, resource, sys, torch
from receipt_pipeline.core import memory
from receipt_pipeline.core.model import build_compact
windows, tokens = int(sys.argv[1]), int(sys.argv[2])
model = build_compact(["O", "B-TOTAL", "I-TOTAL"])
model.train()
optimizer = torch.optim.AdamW(model.parameters())
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
batch = {
    "input_ids": torch.randint(1000, 2000, (windows, tokens)),
    "bbox": torch.randint(0, 500, (windows, tokens, 4)).sort(-1).values,
    "attention_mask": torch.ones(windows, tokens, dtype=torch.long),
    "labels": torch.randint(0, 3, (windows, tokens)),
}
before = rss()
model(**batch).loss.backward()
optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
config = model.config
estimate = memory.activation_bytes_per_window(
    config.num_hidden_layers, config.hidden_size, config.num_attention_heads, tokens) * windows
parameters = sum(p.numel() for p in model.parameters()) * memory.BYTES_PER_PARAMETER
print(json.dumps({"measured": peak - before, "estimate": estimate + parameters}))
"""


def test_the_estimate_is_not_below_what_a_training_step_of_full_windows_takes_on_this_cpu():
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, "8", "512"], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    assert result["measured"] > 0
    assert result["estimate"] >= result["measured"], result
    print(result)


def test_the_smallest_plan_of_several_processes_keeps_the_optimizer_batch():
    roomy = memory.plan_batch(32, 2, bytes_per_window=1 * memory.GIB, fixed_bytes=0, free_bytes=60 * memory.GIB)
    tight = memory.plan_batch(32, 2, bytes_per_window=1 * memory.GIB, fixed_bytes=0, free_bytes=12 * memory.GIB)
    assert (roomy.per_device_batch_size, tight.per_device_batch_size) == (32, 4)
    agreed = roomy.at_most(tight.per_device_batch_size)
    assert (agreed.per_device_batch_size, agreed.gradient_accumulation_steps) == (4, 16)
    assert tight.at_most(roomy.per_device_batch_size) is tight
