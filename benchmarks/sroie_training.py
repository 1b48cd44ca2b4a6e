"""Train the compact model on CPU on the shared SROIE training split and score held-back receipts.

python -m benchmarks sroie-training                   (every default, at most 20 minutes of training)
python -m benchmarks sroie-training-earlier-overrides  (the settings this benchmark once set itself)
python -m benchmarks.sroie_training 8 epochs=6         (a shorter budget, in minutes, and overrides)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

SHARED_SROIE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sroie"
SHARES = (0.7, 0.1, 0.2)  # train, validation (early stopping), held back


# about 130 s an epoch of whole receipts (with its evaluation) on 2 cores: what the earlier overrides fit the
# planned epochs to
SECONDS_PER_EPOCH = 130


def sroie_windows(work: Path, entity_share_target: float = 0.0, receipts: int | None = None):
    """The shared SROIE split (or its first ``receipts``), split by receipt and cut into the compact
    tokenizer's windows under ``work``."""
    from receipt_pipeline.core import bio
    from receipt_pipeline.core.sroie import read_sroie

    source = SHARED_SROIE
    if receipts:
        from receipt_pipeline_tests.training_data import sroie_subset

        source = sroie_subset(SHARED_SROIE, work / "sroie", receipts)
    sroie = read_sroie(str(source))
    split = bio.build_split(
        [sroie.frame], bio.SplitOptions(shares=SHARES, seed=42, entity_share_target=entity_share_target)
    )
    return (sroie, split, *compact_windows(split, work))


def compact_windows(split, work: Path):
    """A split cut into the compact tokenizer's windows (``WindowOptions()``) under ``work``: the tokenizer, the
    manifest and the statistics per split."""
    from receipt_pipeline.core.base_model import COMPACT, load_tokenizer, tokenizer_fingerprint
    from receipt_pipeline.core.windows import WindowOptions, write_windows

    tokenizer = load_tokenizer(COMPACT)
    manifest, stats = write_windows(
        split.table.to_batches(),
        tokenizer,
        split.labels,
        str(work / "windows"),
        WindowOptions(),
        settings={"tokenizer": {"base_model": COMPACT, "fingerprint": tokenizer_fingerprint(tokenizer)}},
    )
    return tokenizer, manifest, stats


def run(minutes: float = 20.0, split_overrides: dict | None = None, **overrides) -> dict:
    """Train with the product's defaults (the compact base model, as the local deployment has it, and a time
    budget of ``minutes``), or with ``overrides`` of the training settings and ``split_overrides`` of the
    split's; the held-back receipts scored as ``evaluation_report`` scores them."""
    from receipt_pipeline.core import bio
    from receipt_pipeline.core.base_model import COMPACT
    from receipt_pipeline.core.evaluation import evaluate
    from receipt_pipeline.core.training import train
    from receipt_pipeline.core.training_options import TrainingOptions

    work = Path(tempfile.mkdtemp(prefix="sroie-training-"))
    split_options = {"entity_share_target": bio.SplitOptions.entity_share_target, **(split_overrides or {})}
    sroie, split, tokenizer, manifest, stats = sroie_windows(work, split_options["entity_share_target"])
    options = TrainingOptions(base_model=COMPACT, max_train_minutes=minutes, **overrides).resolved()
    started = time.monotonic()
    result = train(
        manifest, work / "run", options, tokenizer=tokenizer, on_evaluate=lambda r: print(json.dumps(r), flush=True)
    )
    trained = time.monotonic() - started
    test = split.table.filter(__import__("pyarrow").compute.equal(split.table.column("split"), "test"))
    words = dict(zip(test.column("key").to_pylist(), test.column("words").to_pylist(), strict=True))
    report = evaluate(
        result.best_dir,
        manifest,
        split="test",
        words=words,
        references=bio.reference_fields(test),
        sroie_labels=bio.DEFAULT_SROIE_LABELS,
        pad_token_id=tokenizer.pad_token_id,
    )
    validation = [e for e in result.evaluations if "eval_f1" in e]
    return {
        "receipts": split.receipts_per_split(),
        "windows": {name: s.windows for name, s in stats.items()},
        "training_seconds": trained,
        "steps": result.steps,
        "epochs": result.epochs,
        "best_validation_f1": result.best_f1,
        "validation_precision_recall": [(e["eval_precision"], e["eval_recall"]) for e in validation],
        "real_tokens_per_second": result.real_tokens_per_second,
        "outside_offset": result.outside_offset,
        "overridden": sorted({**overrides, **(split_overrides or {})}),
        "settings": {
            "entity_share_target": split_options["entity_share_target"],
            "epochs": options.epochs,
            "early_stopping_patience": options.early_stopping_patience,
            "evaluation": f"every {options.eval_steps} steps" if options.eval_steps else "every epoch",
            "batch": f"{options.per_device_batch_size} x {options.gradient_accumulation_steps}",
            "learning_rate": options.learning_rate,
            "tag_weights": f"power {options.tag_weight_power:g}, cap {options.tag_weight_cap:g}",
            "precision": precision_name(options),
            "batch_plan": result.batch_plan,
        },
        "report": report.to_dict(),
        "markdown": report.markdown().split("\n", 1)[1],  # without its heading, which names a temp folder
    }


def precision_name(options) -> str:
    from receipt_pipeline.core.trainer import cpu_has_native_bf16

    return "bf16 autocast" if options.mixed_precision and cpu_has_native_bf16() else "float32"


def markdown(minutes: float = 20.0, split_overrides: dict | None = None, **overrides) -> str:
    outcome = run(minutes, split_overrides, **overrides)
    report, settings = outcome["report"], outcome["settings"]
    overridden = ", ".join(outcome["overridden"]) or "none"
    precision, recall = outcome["validation_precision_recall"][-1] if outcome["validation_precision_recall"] else (0, 0)
    lines = [
        f"### Compact model on SROIE, CPU, at most {minutes:g} minutes of training; settings overridden: {overridden}",
        "",
        f"The shared SROIE training split, split by receipt {SHARES[0]:.0%} / {SHARES[1]:.0%} / {SHARES[2]:.0%} "
        f"(train / validation / held back; the benchmark sets these shares): "
        f"{' / '.join(str(n) for n in outcome['receipts'].values())} receipts. What the settings came to: "
        f"lr {settings['learning_rate']:g}, batch {settings['batch']}, {settings['epochs']:g} epochs, "
        f"train down-sampling to entity share {settings['entity_share_target']:g} (0: off), evaluation "
        f"{settings['evaluation']}, early-stopping patience {settings['early_stopping_patience']} (on the validation "
        f"F1 averaged over 3 evaluations), best checkpoint by validation F1, label weights in the loss "
        f"{settings['tag_weights']} (power 0: off), {settings['precision']}; {settings['batch_plan']}.",
        "",
        f"- trained {outcome['training_seconds'] / 60:.1f} min, {outcome['steps']} steps, "
        f"{outcome['epochs']:.1f} epochs, {outcome['real_tokens_per_second']:.0f} real tokens/s",
        f"- best validation entity F1 {outcome['best_validation_f1']:.3f}; the last evaluation's validation "
        f"precision {precision:.3f}, recall {recall:.3f} (each evaluation under the O offset it chose; the model "
        f"kept has {outcome['outside_offset']:+g} added to its O bias)",
        f"- held back: **field-level F1 {report['field_f1']:.3f}**, entity-level F1 {report['entity_f1']:.3f} "
        f"(precision {report['entity_precision']:.3f}, recall {report['entity_recall']:.3f}; the all-O baseline "
        "scores 0 on both F1s)",
        "",
        "Report on the held-back receipts:",
        outcome["markdown"],
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m benchmarks.sroie_training MINUTES [setting=value ...]; entity_share_target is the split's
    values = {k: (int(v) if v.isdigit() else float(v)) for k, v in (arg.split("=") for arg in sys.argv[2:])}
    split = {k: values.pop(k) for k in list(values) if k == "entity_share_target"}
    print(markdown(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0, split, **values), flush=True)
