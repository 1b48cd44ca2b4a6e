"""Training the token classifier with the Hugging Face Trainer, plainly, as run_ner.py does.

A training run has its own folder: ``checkpoints/checkpoint-<step>/`` as the Trainer writes them, each
marked complete (a ``COMPLETE`` file written last) once fully on disk, ``best/``, the best model by
validation F1, and ``windows_manifest.json``, the manifest of the windows it trained on. A re-run in the
same folder resumes from the newest complete checkpoint. With ``sync``, every complete checkpoint is
copied elsewhere (S3 in prod): safetensors and JSON only, marker last.
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

from receipt_pipeline.core import base_model, checkpoint_store, memory, storage
from receipt_pipeline.core.batching import TokenLoss, WindowCollator, tag_weights, with_label_weights
from receipt_pipeline.core.box_augmentation import BoxAugmentation
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.settings import environment
from receipt_pipeline.core.training_options import ENTITY_F1, TrainingOptions
from receipt_pipeline.core.windows import WindowSet

WEIGHTS_FILE = "model.safetensors"
# the manifest of the windows a run trained on, in its run folder (and its S3 copy)
WINDOWS_MANIFEST = "windows_manifest.json"


class TrainingError(ExplainedError, RuntimeError):
    """Training cannot start or go on; the message says why."""


class TrainingInterrupted(TrainingError):
    """A signal stopped training after a checkpoint was saved; a re-run resumes from it."""


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
    batch_plan: str = ""  # how the optimizer's batch ran on this device's memory (core.memory)
    outside_offset: float = 0.0  # added to the best model's O bias: the offset validation chose (core.trainer)
    tag_weights: dict[str, float] = field(default_factory=dict)  # each tag's loss weight; empty: all 1
    # what selected the best model (TrainingOptions.selection_metric) and its validation score; best_f1 is
    # the same model's overall entity F1
    selection_metric: str = ENTITY_F1
    best_selection: float = 0.0
    label_weights: dict[str, float] = field(default_factory=dict)  # the explicit ones; empty: none given


# ------------------------------------------------------------------------------------------ the run


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
    return environment().RANK == 0


def _distributed():
    """torch.distributed when this process is one of several (torchrun), else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _largest_on_any_process(*values: float) -> list[float]:
    """Each value, the largest over the processes (a flag: true on every process when it is true on any): a
    stop that only some processes took would leave the others waiting in the next gradient all-reduce."""
    dist = _distributed()
    if dist is None:
        return [float(value) for value in values]
    import torch

    agreed = torch.tensor([float(value) for value in values], dtype=torch.float64)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return agreed.tolist()


def _sum_over_processes(count: int) -> int:
    dist = _distributed()
    if dist is None:
        return count
    import torch

    value = torch.tensor([count], dtype=torch.int64)
    dist.all_reduce(value)
    return int(value.item())


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_trainer(
    manifest: dict,
    run_dir: Path,
    options: TrainingOptions,
    *,
    cuda: bool = False,
    resume: Path | None = None,
    on_evaluate: Callable[[dict], None] | None = None,
    sync: Callable[[Path, str], None] | None = None,
    tokenizer=None,
):
    """The Trainer for resolved ``options``, with the callback that watches it and the checked tokenizer:
    every setting reaches the Trainer here (the test of that builds one and looks)."""
    import torch
    from transformers import set_seed

    from receipt_pipeline.core.model import load_model
    from receipt_pipeline.core.trainer import (
        SmoothedEarlyStopping,
        TrainingProgress,
        WindowTrainer,
        entity_f1_metrics,
        outside_margins,
        training_arguments,
        weight_correction,
    )

    tags: list[str] = manifest["tags"]
    augment = BoxAugmentation(seed=options.seed) if options.augment else None
    train_set = WindowSet(manifest, "train", augment=augment)
    validation_set = WindowSet(manifest, "validation")
    if not len(train_set) or not len(validation_set):
        raise TrainingError(f"no windows to train on: train {len(train_set)}, validation {len(validation_set)}")
    selection_labels = options.check_labels(manifest["labels"])
    weights = with_label_weights(
        tag_weights(train_set.labels, tags, options.tag_weight_power, options.tag_weight_cap),
        tags,
        options.label_weights,
    )
    if tokenizer is None:
        tokenizer = matching_tokenizer(options.base_model, manifest)
    else:
        check_tokenizer(tokenizer, options.base_model, manifest)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    progress = TrainingProgress(
        tags, options.max_train_seconds, _largest_on_any_process, on_evaluate=on_evaluate, sync=sync
    )
    # a new classification head draws from the global generator: seeded, every run (and every torchrun
    # process) starts from the same weights
    set_seed(options.seed)
    model = load_model(options.base_model, tags) if resume is None else load_model(str(resume), tags)
    if options.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = options.dropout
    # the longest window a batch can hold: the collator pads to the batch's longest, at most this
    tokens = options.pad_to_length or manifest["window"]["max_length"]
    requested = (options.per_device_batch_size, options.gradient_accumulation_steps)
    plan = memory.plan_for_model(model, *requested, tokens, cuda)
    # each torchrun process plans on the memory it sees; they must step alike, so the smallest plan wins
    [smallest] = _largest_on_any_process(-plan.per_device_batch_size)
    plan = plan.at_most(int(-smallest))
    options = replace(
        options,
        per_device_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
    )
    trainer = WindowTrainer(
        model=model,
        args=training_arguments(options, run_dir, cuda),
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=WindowCollator(
            tokenizer.pad_token_id, multiple_of=8 if cuda else None, pad_to_length=options.pad_to_length
        ),
        compute_metrics=entity_f1_metrics(validation_set, selection_labels),
        compute_loss_func=TokenLoss(options.label_smoothing, weights),
        preprocess_logits_for_metrics=outside_margins(tags, weight_correction(weights)),
        callbacks=[SmoothedEarlyStopping(options.early_stopping_patience), progress],
        length_buckets=options.group_by_length,
        sampler_seed=options.seed,
        budget_spent=(lambda: progress.budget_spent) if options.max_train_seconds else None,
        warmup_ratio=options.warmup_ratio,
    )
    trainer.batch_plan = plan.describe(*requested)
    return trainer, progress, tokenizer


def train(
    manifest: dict,
    run_dir: str | Path,
    options: TrainingOptions | None = None,
    *,
    on_evaluate: Callable[[dict], None] | None = None,
    sync: Callable[[Path, str], None] | None = None,
    tokenizer=None,
) -> TrainingResult:
    """Train on the manifest's train windows, select on validation (``options.selection_metric``), and leave
    the best model in ``<run_dir>/best``. ``sync(folder, name)`` is called for every complete checkpoint and
    for the best."""
    import torch

    from receipt_pipeline.core.trainer import (
        apply_outside_offset,
        evaluation_of_best,
        outside_offset_of_best,
        weight_correction,
    )

    cuda = gpu_available()
    options = (options or TrainingOptions()).resolved(gpu=cuda)
    run_dir = Path(run_dir)
    main_process = is_main_process()  # under torchrun every process runs this function
    removed = checkpoint_store.remove_incomplete_checkpoints(run_dir) if main_process else []
    resume = checkpoint_store.latest_complete_checkpoint(run_dir)
    if resume is not None:
        check_label_list(resume, manifest["tags"])
    trainer, progress, tokenizer = build_trainer(
        manifest, run_dir, options, cuda=cuda, resume=resume, on_evaluate=on_evaluate, sync=sync, tokenizer=tokenizer
    )
    options = replace(
        options,
        per_device_batch_size=trainer.args.per_device_train_batch_size,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
    )
    if main_process:
        print(f"training: {trainer.batch_plan}", flush=True)
        write_windows_manifest(manifest, run_dir, sync)

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
            f"checkpoint saved in {run_dir / checkpoint_store.CHECKPOINTS}, a re-run resumes from it"
        )

    best_dir = run_dir / checkpoint_store.BEST
    staging = run_dir / f".{checkpoint_store.BEST}.partial"
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)
    outside_offset = outside_offset_of_best(trainer.state)
    weights = trainer.compute_loss_func.tag_weights
    apply_outside_offset(trainer.model, manifest["tags"], outside_offset, weight_correction(weights))
    trainer.save_model(str(staging))
    hyperparameters = asdict(options)
    if main_process:
        _save_best(trainer, tokenizer, staging, best_dir, manifest, options, outside_offset)
        if sync:
            sync(best_dir, checkpoint_store.BEST)

    real_tokens = int(trainer.state.num_input_tokens_seen or 0)
    if cuda:
        peak = int(torch.cuda.max_memory_allocated())
        device = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        device = "cpu"
    best_f1 = evaluation_of_best(trainer.state).get("eval_f1")
    return TrainingResult(
        run_dir=str(run_dir),
        best_dir=str(best_dir),
        best_f1=_number(best_f1),
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
        batch_plan=trainer.batch_plan,
        outside_offset=outside_offset,
        tag_weights={tag: round(float(w), 3) for tag, w in zip(manifest["tags"], weights, strict=True)}
        if weights is not None
        else {},
        selection_metric=options.selection_metric,
        best_selection=_number(trainer.state.best_metric),
        label_weights=dict(options.label_weights or {}),
    )


def write_windows_manifest(manifest: dict, run_dir: Path, sync: Callable[[Path, str], None] | None = None) -> None:
    """``<run_dir>/windows_manifest.json``, the manifest as given: the frozen windows every checkpoint of the run
    can be scored on again (``layoutlm-cli eval-checkpoints``). A run synced to S3 gets a copy beside its
    checkpoints, so its S3 folder alone is enough to score them."""
    data = json.dumps(manifest, indent=2).encode()
    storage.write_bytes(str(run_dir / WINDOWS_MANIFEST), data)  # beside its target, then renamed: never half-written
    # sync(folder, name) copies folders; the manifest is a file of the run folder itself, so it goes up directly
    if isinstance(sync, checkpoint_store.CheckpointSync):
        storage.write_bytes(storage.join(sync.run_uri, WINDOWS_MANIFEST), data)


def _number(value: float | None) -> float:
    return float(value) if value is not None and not math.isnan(value) else 0.0


def _save_best(
    trainer, tokenizer, staging: Path, best_dir: Path, manifest: dict, options: TrainingOptions, outside_offset: float
) -> None:
    # the Trainer pickles its arguments; the model folder carries them as JSON, so it holds no pickle at all
    tags = manifest["tags"]
    (staging / "training_args.bin").unlink(missing_ok=True)
    (staging / "training_args.json").write_text(trainer.args.to_json_string())
    tokenizer.save_pretrained(str(staging))
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    (staging / "label_map.json").write_text(json.dumps({"tags": tags, "labels": manifest["labels"]}, indent=2))
    (staging / "training_options.json").write_text(json.dumps(asdict(options), indent=2))
    checkpoint_store.mark_complete(
        staging,
        {
            "step": trainer.state.global_step,
            "best_metric": trainer.state.best_metric,  # the selection metric's score
            "selection_metric": options.selection_metric,
            "tags": tags,
            "outside_offset": outside_offset,
            "label_weights": options.label_weights or {},
        },
    )
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(staging, best_dir)


def weights_digest(model_dir: str | Path) -> str:
    """The sha256 of a saved model's weights: the checkpoint's data version, the same wherever it is copied."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]
