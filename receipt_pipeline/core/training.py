"""Training the token classifier with the Hugging Face Trainer, plainly, as run_ner.py does.

A training run has its own folder: ``checkpoints/checkpoint-<step>/`` as the Trainer writes them, each
marked complete (a ``COMPLETE`` file written last) once fully on disk, and ``best/``, the best model by
validation F1. A re-run in the same folder resumes from the newest complete checkpoint. With ``sync``,
every complete checkpoint is copied elsewhere (S3 in prod): safetensors and JSON only, marker last.
On SIGTERM or SIGINT (a spot interruption notice) the Trainer saves a checkpoint at the end of the
current step, it is synced, and :class:`TrainingInterrupted` is raised so the run can be retried.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from receipt_pipeline.core import base_model
from receipt_pipeline.core.batching import LengthBucketSampler, TokenLoss, WindowCollator
from receipt_pipeline.core.box_augmentation import BoxAugmentation
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.evaluation import entity_scores, receipt_tags, true_receipt_tags
from receipt_pipeline.core.windows import WindowSet

COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS = "checkpoints"
BEST = "best"
WEIGHTS_FILE = "model.safetensors"
# Defaults follow the base model. LayoutLM-base keeps the earlier system's settings. The compact model
# wants a higher rate and more, smaller steps: on SROIE at the same epochs, batch 8 x 4 at 1e-4 scored
# field F1 0.60 and 4 x 1 at 2e-4 scored 0.85; batch 4 is also faster on CPU (BENCHMARKS.md).
BASE_DEFAULTS = {"per_device_batch_size": 8, "gradient_accumulation_steps": 4, "learning_rate": 5e-5}
DEFAULTS_BY_BASE_MODEL = {
    base_model.COMPACT: {"per_device_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-4},
}


class TrainingError(ExplainedError, RuntimeError):
    """Training cannot start or go on; the message says why."""


class TrainingInterrupted(TrainingError):
    """A signal stopped training after a checkpoint was saved; a re-run resumes from it."""


@dataclass
class TrainingOptions:
    base_model: str = base_model.COMPACT
    epochs: float = 10
    # None: the base model's default (DEFAULTS_BY_BASE_MODEL, else BASE_DEFAULTS)
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 3
    seed: int = 42
    auto_batch_size: bool = False
    augment: bool = False
    group_by_length: bool = True
    max_steps: int = -1  # stop after this many optimizer steps (tests, benchmarks); -1: epochs decide
    eval_steps: int | None = None  # evaluate and save every this many steps instead of every epoch
    max_train_seconds: float | None = None  # stop (after a save) when training has run this long
    dataloader_workers: int = 2  # CUDA only
    dropout: float | None = None  # hidden and attention dropout; None: the base model's own
    # every window padded to this many tokens instead of the batch's longest (the earlier system's
    # setting, kept to measure against; BENCHMARKS.md)
    pad_to_length: int | None = None

    def resolved(self, gpu: bool = False) -> TrainingOptions:
        """These options with every base-model default filled in. On a ``gpu``, where neither the batch nor the
        accumulation was set, the default accumulation is folded into the batch: the same optimizer steps in one
        pass, since a GPU takes as long for batch 8 as for 32 (BENCHMARKS.md, GPU sweep)."""
        defaults = DEFAULTS_BY_BASE_MODEL.get(self.base_model, BASE_DEFAULTS)
        if gpu and self.per_device_batch_size is None and self.gradient_accumulation_steps is None:
            folded = defaults["per_device_batch_size"] * defaults["gradient_accumulation_steps"]
            defaults = {**defaults, "per_device_batch_size": folded, "gradient_accumulation_steps": 1}
        unset = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return replace(self, **unset)


@dataclass
class TrainingResult:
    run_dir: str
    best_dir: str
    best_f1: float
    epochs: float
    steps: int
    real_tokens: int
    real_tokens_per_second: float
    padded_tokens: int  # tokens through the model, padding included: real / padded is the padding efficiency
    step_seconds: float  # inside optimizer steps (forward, backward, update): wall time less evaluation and saving
    wall_seconds: float
    device: str
    peak_memory_bytes: int
    resumed_from: str | None
    first_loss: float | None
    last_loss: float | None
    evaluations: list[dict] = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    complete = [p for p in checkpoint_dirs(run_dir) if (p / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(run_dir: str | Path) -> list[str]:
    """Checkpoints a crash left half-written: never resumed from, removed before training goes on."""
    removed = []
    for path in checkpoint_dirs(run_dir):
        if not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def check_label_list(checkpoint: Path, tags: list[str]) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    saved = [config["id2label"][str(i)] for i in range(len(config.get("id2label", {})))]
    if saved != tags:
        raise TrainingError(
            f"checkpoint {checkpoint} was trained on the tags {saved}, but the windows now have {tags}: "
            "resuming would mix label spaces; train in a new run folder"
        )


def matching_tokenizer(source: str, manifest: dict):
    """The tokenizer of the base model ``source``, refused unless it cuts text as the windows' tokenizer did."""
    return check_tokenizer(base_model.load_tokenizer(source), source, manifest)


def check_tokenizer(tokenizer, source: str, manifest: dict):
    """``tokenizer`` (the base model's) if its fingerprint is the windows' one; a :class:`TrainingError`
    naming both base models otherwise: the token ids in the windows would mean other words to the model,
    and the tokenizer saved beside the trained weights would not be the one its inputs were cut with."""
    windows = manifest["tokenizer"]
    fingerprint = base_model.tokenizer_fingerprint(tokenizer)
    if fingerprint != windows["fingerprint"]:
        remedy = (
            "rebuild windowed_tensors (its tokenizer has changed since)"
            if source == windows["base_model"]
            else f"rebuild windowed_tensors with base_model {source!r}, or train base model {windows['base_model']!r}"
        )
        raise TrainingError(
            f"base model {source!r} has another tokenizer (fingerprint {fingerprint}) than the one the windows "
            f"were cut with, base model {windows['base_model']!r} (fingerprint {windows['fingerprint']}): {remedy}"
        )
    return tokenizer


def is_main_process() -> bool:
    """False in every torchrun process but the first: only the first writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def _distributed():
    """torch.distributed when this process is one of several (torchrun), else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _on_any_process(*flags: bool) -> list[bool]:
    """Each flag, true on every process when it is true on any: a stop that only some processes took
    would leave the others waiting in the next gradient all-reduce."""
    dist = _distributed()
    if dist is None:
        return list(flags)
    import torch

    values = torch.tensor([int(flag) for flag in flags])
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def _sum_over_processes(count: int) -> int:
    dist = _distributed()
    if dist is None:
        return count
    import torch

    value = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(value)
    return int(value.item())


def _write_marker(folder: Path, payload: dict) -> None:
    tmp = folder / f".{COMPLETE_MARKER}.partial"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, folder / COMPLETE_MARKER)


# ------------------------------------------------------------------------------------------ the run


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def train(
    manifest: dict,
    run_dir: str | Path,
    options: TrainingOptions | None = None,
    *,
    on_evaluate: Callable[[dict], None] | None = None,
    sync: Callable[[Path, str], None] | None = None,
    tokenizer=None,
) -> TrainingResult:
    """Train on the manifest's train windows, select on validation F1, and leave the best model in
    ``<run_dir>/best``. ``sync(folder, name)`` is called for every complete checkpoint and for the best."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    from receipt_pipeline.core.model import load_model

    cuda = gpu_available()
    options = (options or TrainingOptions()).resolved(gpu=cuda)
    run_dir = Path(run_dir)
    tags: list[str] = manifest["tags"]
    main_process = is_main_process()  # under torchrun every process runs this function
    removed = remove_incomplete_checkpoints(run_dir) if main_process else []
    resume = latest_complete_checkpoint(run_dir)
    if resume is not None:
        check_label_list(resume, tags)

    train_set = WindowSet(manifest, "train", augment=BoxAugmentation(seed=options.seed) if options.augment else None)
    validation_set = WindowSet(manifest, "validation")
    if not len(train_set) or not len(validation_set):
        raise TrainingError(f"no windows to train on: train {len(train_set)}, validation {len(validation_set)}")
    if tokenizer is None:
        tokenizer = matching_tokenizer(options.base_model, manifest)
    else:
        check_tokenizer(tokenizer, options.base_model, manifest)

    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = cuda and torch.cuda.is_bf16_supported()
    by_steps = options.eval_steps is not None
    args = TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.per_device_batch_size,
        per_device_eval_batch_size=options.per_device_batch_size * 2,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_ratio,
        max_grad_norm=options.max_grad_norm,
        seed=options.seed,
        auto_find_batch_size=options.auto_batch_size,
        train_sampling_strategy="group_by_length" if options.group_by_length else "random",
        eval_strategy="steps" if by_steps else "epoch",
        save_strategy="steps" if by_steps else "epoch",
        eval_steps=options.eval_steps,
        save_steps=options.eval_steps or 500,
        logging_strategy="steps",
        logging_steps=1 if options.max_steps and 0 < options.max_steps <= 50 else 10,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        save_total_limit=2,
        bf16=bf16,
        fp16=cuda and not bf16,
        tf32=True if cuda else None,
        dataloader_pin_memory=cuda,
        dataloader_num_workers=options.dataloader_workers if cuda else 0,
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=False,
    )

    def compute_metrics(prediction) -> dict:
        predicted = prediction.predictions
        windows = [predicted[i, :n] for i, n in enumerate(validation_set.lengths)]
        scores = entity_scores(true_receipt_tags(validation_set), receipt_tags(validation_set, windows))
        overall = scores["overall"]
        return {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1"]}

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.evaluations: list[dict] = []
            self.losses: list[float] = []
            self.stop_requested: str | None = None
            self.started = time.monotonic()
            self.step_started = self.started
            self.step_seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            record = {"step": state.global_step, "epoch": state.epoch, **(metrics or {})}
            record = json.loads(json.dumps(record, default=float))  # plain numbers: numpy's do not serialise
            self.evaluations.append(record)
            if on_evaluate:
                on_evaluate(record)

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds += time.monotonic() - self.step_started
            budget = options.max_train_seconds
            out_of_time = bool(budget) and time.monotonic() - self.started > budget
            interrupted, out_of_time = _on_any_process(bool(self.stop_requested), out_of_time)
            if interrupted or out_of_time:
                self.stop_requested = self.stop_requested or ("SIGTERM" if interrupted else None)
                control.should_save = True
                control.should_evaluate = not interrupted  # a spot notice leaves no time to evaluate
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            _write_marker(folder, {"step": state.global_step, "epoch": state.epoch, "tags": tags})
            if sync:
                sync(folder, folder.name)

    class WindowTrainer(Trainer):
        padded_tokens = 0

        def _get_train_sampler(self, train_dataset=None):
            if not options.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return LengthBucketSampler(train_set.lengths, self._train_batch_size, options.seed)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.padded_tokens += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

        def _get_eval_sampler(self, eval_dataset):
            # predictions merge back to receipts by window position: evaluation keeps the stored order
            # (the Trainer would otherwise group evaluation windows by length too)
            return torch.utils.data.SequentialSampler(eval_dataset)

    progress = Progress()
    # a new classification head draws from the global generator: seeded, every run (and every torchrun
    # process) starts from the same weights
    set_seed(options.seed)
    model = load_model(options.base_model, tags) if resume is None else load_model(str(resume), tags)
    if options.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = options.dropout
    trainer = WindowTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=WindowCollator(
            tokenizer.pad_token_id, multiple_of=8 if cuda else None, pad_to_length=options.pad_to_length
        ),
        compute_metrics=compute_metrics,
        compute_loss_func=TokenLoss(options.label_smoothing),
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=options.early_stopping_patience), progress],
    )

    def request_stop(signum, frame):
        progress.stop_requested = signal.Signals(signum).name

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
    started = time.monotonic()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    wall = time.monotonic() - started
    padded_tokens = _sum_over_processes(trainer.padded_tokens)
    if progress.stop_requested:
        raise TrainingInterrupted(
            f"training stopped by {progress.stop_requested} at step {trainer.state.global_step}; "
            f"checkpoint saved in {run_dir / CHECKPOINTS}, a re-run resumes from it"
        )

    best_dir = run_dir / BEST
    staging = run_dir / f".{BEST}.partial"
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    hyperparameters = asdict(options)
    if main_process:
        _save_best(trainer, tokenizer, staging, best_dir, manifest, hyperparameters)
        if sync:
            sync(best_dir, BEST)

    real_tokens = int(trainer.state.num_input_tokens_seen or 0)
    if cuda:
        peak = int(torch.cuda.max_memory_allocated())
        device = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        device = "cpu"
    best_f1 = trainer.state.best_metric
    return TrainingResult(
        run_dir=str(run_dir),
        best_dir=str(best_dir),
        best_f1=float(best_f1) if best_f1 is not None and not math.isnan(best_f1) else 0.0,
        epochs=float(trainer.state.epoch or 0.0),
        steps=int(trainer.state.global_step),
        real_tokens=real_tokens,
        real_tokens_per_second=real_tokens / wall if wall else 0.0,
        padded_tokens=padded_tokens,
        step_seconds=progress.step_seconds,
        wall_seconds=wall,
        device=device,
        peak_memory_bytes=peak,
        resumed_from=str(resume) if resume else None,
        first_loss=progress.losses[0] if progress.losses else None,
        last_loss=progress.losses[-1] if progress.losses else None,
        evaluations=progress.evaluations + ([{"removed_incomplete_checkpoints": removed}] if removed else []),
        hyperparameters=hyperparameters,
    )


def _save_best(trainer, tokenizer, staging: Path, best_dir: Path, manifest: dict, hyperparameters: dict) -> None:
    # the Trainer pickles its arguments; the model folder carries them as JSON, so it holds no pickle at all
    tags = manifest["tags"]
    (staging / "training_args.bin").unlink(missing_ok=True)
    (staging / "training_args.json").write_text(trainer.args.to_json_string())
    tokenizer.save_pretrained(str(staging))
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    (staging / "label_map.json").write_text(json.dumps({"tags": tags, "labels": manifest["labels"]}, indent=2))
    (staging / "training_options.json").write_text(json.dumps(hyperparameters, indent=2))
    _write_marker(staging, {"step": trainer.state.global_step, "best_metric": trainer.state.best_metric, "tags": tags})
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(staging, best_dir)


def weights_digest(model_dir: str | Path) -> str:
    """The sha256 of a saved model's weights: the checkpoint's data version, the same wherever it is copied."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]
