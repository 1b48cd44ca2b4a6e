"""Training throughput on CPU: the pipeline's padding against the earlier system's.

python -m benchmarks training-throughput

The compact model, one epoch of the train windows of the first 140 shared SROIE receipts (the same
windows, the same number of optimizer steps), batch 8 x accumulation 4 in every setting; only the padding
and the order differ, and the precision in the third. The settings alternate within each run; tokens per
second count the real (non-pad) tokens over the time spent in optimizer steps (evaluation and saving excluded).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "earlier system: every window padded to 512, random order": {"pad_to_length": 512, "group_by_length": False},
    "pipeline: padded to the batch's longest, grouped by length": {"pad_to_length": None, "group_by_length": True},
    # the default mixed precision is bf16 autocast where the CPU computes bf16 natively: the same, in float32
    "pipeline, float32 (mixed_precision off)": {
        "pad_to_length": None,
        "group_by_length": True,
        "mixed_precision": False,
    },
}


# about 100 train windows: 3 full optimizer steps of 32 and a short one, so 5 runs of both fit in minutes
RECEIPTS = 140


def run(runs: int = 5, receipts: int = RECEIPTS) -> dict:
    from benchmarks.sroie_training import sroie_windows
    from receipt_pipeline.core.base_model import COMPACT
    from receipt_pipeline.core.training import train
    from receipt_pipeline.core.training_options import TrainingOptions

    work = Path(tempfile.mkdtemp(prefix="training-throughput-"))
    _, _, tokenizer, manifest, stats = sroie_windows(work, receipts=receipts)
    measured: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for index in range(runs):
        names = list(SETTINGS) if index % 2 == 0 else list(reversed(SETTINGS))
        for name in names:
            options = TrainingOptions(
                base_model=COMPACT,
                epochs=1,
                per_device_batch_size=8,
                gradient_accumulation_steps=4,
                learning_rate=1e-4,
                warmup_ratio=0.0,
                seed=42 + index,
                eval_steps=10_000,  # no evaluation inside the epoch
                **SETTINGS[name],
            )
            started = time.monotonic()
            result = train(
                manifest,
                work / f"run-{index}-{list(SETTINGS).index(name)}",
                options,
                tokenizer=tokenizer,
            )
            record = {
                "steps": result.steps,
                "real_tokens": result.real_tokens,
                "padded_tokens": result.padded_tokens,
                "step_seconds": result.step_seconds,
                "wall_seconds": time.monotonic() - started,
                "first_loss": result.first_loss,
                "last_loss": result.last_loss,
            }
            record["real_tokens_per_second"] = record["real_tokens"] / record["step_seconds"]
            measured[name].append(record)
            print(name, record, flush=True)
    return {"train_windows": stats["train"].windows, "train_receipts": stats["train"].receipts, "runs": measured}


def markdown(runs: int = 5) -> str:
    return table(run(runs))


def table(outcome: dict) -> str:
    runs = min(len(records) for records in outcome["runs"].values())
    rows, medians = [], {}
    for name, records in outcome["runs"].items():
        speeds = [r["real_tokens_per_second"] for r in records]
        medians[name] = statistics.median(speeds)
        steps = records[0]["steps"]
        real = records[0]["real_tokens"]
        padded = statistics.median(r["padded_tokens"] for r in records)
        step_seconds = statistics.median(r["step_seconds"] for r in records)
        rows.append(
            f"| {name} | {steps} | {real:,} | {padded:,.0f} | {real / padded:.1%} | {step_seconds:.1f} "
            f"| **{medians[name]:,.0f}** | {', '.join(f'{s:,.0f}' for s in speeds)} |"
        )
    earlier, pipeline, float32 = (medians[name] for name in SETTINGS)
    from receipt_pipeline.core.trainer import cpu_has_native_bf16

    precision = "bf16 autocast (this CPU computes bf16 natively)" if cpu_has_native_bf16() else "float32 (no bf16)"
    return "\n".join(
        [
            "### Training throughput on CPU: dynamic padding and length grouping against padding to 512",
            "",
            f"`python -m benchmarks training-throughput`. The compact model, one epoch of the "
            f"train windows of the first {RECEIPTS} shared SROIE receipts ({outcome['train_windows']} windows of "
            f"{outcome['train_receipts']} receipts), "
            f"batch 8 x accumulation 4, lr 1e-4, in every setting: the same windows and the same number of optimizer "
            f"steps. {runs} runs; the settings alternate within each run. Real tokens per second = non-pad "
            "tokens / seconds inside optimizer steps (forward, backward, update; evaluation and saving excluded).",
            "",
            "| setting | optimizer steps | real tokens | tokens through the model (median) | padding efficiency "
            "| median step s | median real tokens/s | runs |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Pipeline / earlier system: **{pipeline / earlier:.2f}x** real tokens per second (target: at least 2x). "
            f"The first two rows run the default mixed precision, here {precision}: "
            f"**{pipeline / float32:.2f}x** the tokens per second of float32.",
        ]
    )
