"""The Hugging Face side of training: the arguments, the Trainer and the callback that ``training.train``
puts together. Imported only when a run trains, so that loading the pipeline does not load transformers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from receipt_pipeline.core import checkpoint_store
from receipt_pipeline.core.batching import LengthBucketSampler
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.evaluation import overall_entity_scores, receipt_tags, true_receipt_tags
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline.core.windows import WindowSet


def training_arguments(options: TrainingOptions, run_dir: Path, cuda: bool) -> TrainingArguments:
    """The Trainer's arguments for resolved ``options``: every setting the Trainer itself applies is set here."""
    bf16 = options.mixed_precision and (torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16())
    return TrainingArguments(**training_argument_values(options, run_dir, cuda, bf16))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where autocast to bfloat16 trains
    the compact model about 1.3x faster than float32 (BENCHMARKS.md); elsewhere it is emulated, and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def training_argument_values(options: TrainingOptions, run_dir: Path, cuda: bool, bf16: bool) -> dict:
    """:func:`training_arguments`' values, as a dict: what a GPU gets can be read on a CPU too."""
    by_steps = options.eval_steps is not None
    return dict(
        output_dir=str(run_dir / checkpoint_store.CHECKPOINTS),
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
        metric_for_best_model=SELECTION,
        greater_is_better=True,
        save_total_limit=2,
        bf16=bf16,
        fp16=options.mixed_precision and cuda and not bf16,
        tf32=True if cuda else None,
        dataloader_pin_memory=cuda,
        dataloader_num_workers=options.dataloader_workers if cuda else 0,
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=False,
    )


# The metric that selects (the O offset, the checkpoint kept, when to stop): the overall entity F1 or a label
# group's macro F1, as TrainingOptions.selection_metric says; eval_selection in the Trainer's log
SELECTION = "selection"

# Offsets added to the O logit, among which each evaluation picks the one with the best validation F1: a
# model stopped early, or trained on few entities, ranks entity tags below O where they still win on ranking
OUTSIDE_OFFSETS = tuple(float(v) for v in np.arange(-4.0, 4.01, 0.5))


def weight_correction(tag_weights: np.ndarray | None) -> np.ndarray | None:
    """What to take from each tag's logit to undo its loss weight: log(weight). A loss that weighs tag c by w_c
    is minimised by probabilities proportional to w_c x the true ones (logit adjustment, Menon et al. 2021),
    so the weights that make rare tags learnt early would otherwise leave the model over-predicting them."""
    return None if tag_weights is None else np.log(np.asarray(tag_weights, dtype=np.float32))


def outside_margins(tags: list[str], correction: np.ndarray | None = None) -> Callable:
    """``preprocess_logits_for_metrics``: for each token, how far the O logit leads the best entity tag, and
    that tag, after taking ``correction`` (:func:`weight_correction`) from the logits; enough to read the
    prediction under any O offset without keeping every logit."""
    outside = tags.index(OUTSIDE)
    shift = None if correction is None else torch.as_tensor(correction, dtype=torch.float32)

    def preprocess(logits, labels):
        scores = logits.float() if shift is None else logits.float() - shift.to(logits.device)
        best = scores.index_fill(-1, torch.tensor([outside], device=scores.device), float("-inf")).max(dim=-1)
        return torch.stack([scores[..., outside] - best.values, best.indices.float()], dim=-1)

    return preprocess


def macro_entity_f1(
    truth: Mapping[str, list[str]],
    predicted: Mapping[str, list[str]],
    labels: Sequence[str],
    truth_entities=None,
) -> float:
    """The mean of seqeval's strict IOB2 entity F1 of each of ``labels``, per receipt as
    :func:`~receipt_pipeline.core.evaluation.entity_scores` scores them, over the labels seqeval scores (those
    with a true or a predicted entity in these receipts: a label predicted where none is true scores 0); 0.0
    where none of them has. ``truth_entities``: seqeval's ``Entities`` of the truth in sorted receipt order,
    to read once for many predictions. One pass of per-label counts, not seqeval's slower report."""
    from seqeval.metrics.v1 import precision_recall_fscore_support
    from seqeval.scheme import IOB2, Entities

    keys = sorted(truth)
    y_true = [truth[key] for key in keys]
    y_pred = [predicted.get(key, [OUTSIDE] * len(truth[key])) for key in keys]
    entities_true = truth_entities if truth_entities is not None else Entities(y_true, IOB2)
    entities_pred = Entities(y_pred, IOB2)
    names = sorted(entities_true.unique_tags | entities_pred.unique_tags)
    _, _, f1, _ = precision_recall_fscore_support(
        y_true,
        y_pred,
        average=None,
        scheme=IOB2,
        zero_division=0,
        entities_true=entities_true,
        entities_pred=entities_pred,
    )
    wanted = set(labels)
    scored = [float(score) for name, score in zip(names, f1, strict=True) if name in wanted]
    return sum(scored) / len(scored) if scored else 0.0


def entity_f1_metrics(validation_set: WindowSet, selection_labels: Sequence[str] | None = None) -> Callable:
    """``compute_metrics``: seqeval entity scores of the validation windows, merged back to receipts, under
    the O offset (of :data:`OUTSIDE_OFFSETS`) that selects best; ``argmax_f1`` is the F1 with no offset.

    ``selection`` is what selects: the overall entity F1, or with ``selection_labels`` the macro F1 of those
    labels (:func:`macro_entity_f1`). ``precision``, ``recall`` and ``f1`` are the overall scores under the
    offset it chose. The model kept is the one these scores describe: training adds the chosen offset to the
    O bias of the best checkpoint's classifier."""
    outside = validation_set.tags.index(OUTSIDE)
    truth = true_receipt_tags(validation_set)
    truth_entities = None
    if selection_labels is not None:
        from seqeval.scheme import IOB2, Entities

        truth_entities = Entities([truth[key] for key in sorted(truth)], IOB2)

    def scores(margins: np.ndarray, offset: float) -> dict:
        windows = [
            np.where(margins[i, :n, 0] + offset >= 0, outside, margins[i, :n, 1]).astype(np.int64)
            for i, n in enumerate(validation_set.lengths)
        ]
        predicted = receipt_tags(validation_set, windows)
        overall = overall_entity_scores(truth, predicted)
        if selection_labels is None:
            return {**overall, SELECTION: overall["f1"]}
        return {**overall, SELECTION: macro_entity_f1(truth, predicted, selection_labels, truth_entities)}

    def compute_metrics(prediction) -> dict:
        margins = prediction.predictions
        by_offset = {offset: scores(margins, offset) for offset in OUTSIDE_OFFSETS}
        # the smallest offset among equal scores: an offset must earn its place
        offset = max(OUTSIDE_OFFSETS, key=lambda o: (by_offset[o][SELECTION], -abs(o)))
        chosen, argmax = by_offset[offset], by_offset[0.0]
        return {
            "precision": chosen["precision"],
            "recall": chosen["recall"],
            "f1": chosen["f1"],
            SELECTION: chosen[SELECTION],
            "outside_offset": offset,
            "argmax_f1": argmax["f1"],
        }

    compute_metrics.selection_labels = None if selection_labels is None else tuple(selection_labels)
    return compute_metrics


def evaluation_of_best(state) -> dict:
    """The logged evaluation (``eval_f1``, ``eval_selection``, ``eval_outside_offset``...) of the best
    checkpoint; empty where none was recorded."""
    if not state.best_model_checkpoint:
        return {}
    step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    evaluations = [e for e in state.log_history if e.get("step") == step and "eval_f1" in e]
    return evaluations[-1] if evaluations else {}


def outside_offset_of_best(state) -> float:
    """The O offset chosen at the evaluation of the best checkpoint (0 where none was recorded)."""
    return float(evaluation_of_best(state).get("eval_outside_offset", 0.0))


def apply_outside_offset(model, tags: list[str], offset: float, correction: np.ndarray | None = None) -> None:
    """Takes ``correction`` from the classifier's biases and adds ``offset`` to its O bias, so that the plain
    argmax of any runtime (PyTorch, ONNX, Core ML) predicts what validation measured."""
    with torch.no_grad():
        bias = model.classifier.bias
        if correction is not None:
            bias -= torch.as_tensor(correction, dtype=bias.dtype, device=bias.device)
        bias[tags.index(OUTSIDE)] += offset


def smoothed(scores: list[float], window: int) -> list[float]:
    """The running mean of each score with the ``window - 1`` before it (fewer at the start)."""
    return [sum(scores[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(scores))]


def evaluations_without_progress(scores: list[float], window: int) -> int:
    """How many evaluations since the smoothed validation score last reached a new best."""
    means = smoothed(scores, window)
    best = max(range(len(means)), key=lambda i: (means[i], -i)) if means else 0
    return len(means) - 1 - best


class SmoothedEarlyStopping(TrainerCallback):
    """Stops once the validation score that selects (``metric``: ``eval_selection``, the selection metric),
    averaged over the last ``window`` evaluations, has not reached a new best for ``patience`` evaluations. A
    small validation set makes single evaluations noisy: a peak and three lower scores would stop a run that
    is still improving on average. The best checkpoint by the raw score is kept, as before
    (``load_best_model_at_end``). Reads the scores from the Trainer's log history, so a resumed run counts the
    evaluations before its interruption too."""

    def __init__(self, patience: int, window: int = 3, metric: str = f"eval_{SELECTION}") -> None:
        self.early_stopping_patience = patience
        self.window = window
        self.metric = metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        scores = [float(entry[self.metric]) for entry in state.log_history if self.metric in entry]
        if evaluations_without_progress(scores, self.window) >= self.early_stopping_patience:
            control.should_training_stop = True


class BudgetedLinearSchedule(torch.optim.lr_scheduler.LRScheduler):
    """The linear warm-up and decay of the Trainer's default schedule, laid out over the run's progress: the
    larger of the steps done over the steps planned and the share of the time budget spent. Laid out over the
    steps alone, a budget that ends a run before its epochs stops it at a rate still near the peak, never
    annealed; here the rate reaches zero as the budget runs out, or as the last step is taken, whichever comes
    first. ``budget_spent`` reads the share every process agrees on (``TrainingProgress.budget_spent``), so
    that torchrun's processes step with the same rate. The progress reached is kept in the checkpoint: a
    resumed run, which gets a budget of its own, lays the rest of the schedule over that budget."""

    def __init__(self, optimizer, total_steps: int, warmup_ratio: float, budget_spent: Callable[[], float]) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_ratio = warmup_ratio
        self.budget_spent = budget_spent
        self.progress = 0.0
        self.resumed_at = 0.0
        super().__init__(optimizer)

    def factor(self, progress: float) -> float:
        if progress < self.warmup_ratio:
            return progress / self.warmup_ratio
        return max(0.0, (1.0 - progress) / (1.0 - self.warmup_ratio))

    def get_lr(self) -> list[float]:
        by_steps = self.last_epoch / self.total_steps
        by_time = self.resumed_at + (1.0 - self.resumed_at) * min(1.0, self.budget_spent())
        self.progress = min(1.0, max(self.progress, by_steps, by_time))
        return [base * self.factor(self.progress) for base in self.base_lrs]

    def state_dict(self) -> dict:
        # plain numbers only: the Trainer reloads this file with weights_only=True
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "progress": self.progress,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)
        self.resumed_at = self.progress


class TrainingProgress(TrainerCallback):
    """Records losses and evaluations, keeps the time budget, stops on a signal, and marks (and syncs) each
    saved checkpoint complete.

    ``agree`` is asked after every step with (a signal arrived, the budget is spent, the share of the budget
    spent) and answers each as the largest over the processes: a stop that only some processes took would
    hang the others, and a learning rate laid over the budget must be the same on each.
    """

    def __init__(
        self,
        tags: list[str],
        max_train_seconds: float | None,
        agree: Callable[..., list[float]],
        on_evaluate: Callable[[dict], None] | None = None,
        sync: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.tags = tags
        self.max_train_seconds = max_train_seconds
        self.agree = agree
        self.report_evaluation = on_evaluate
        self.sync = sync
        self.evaluations: list[dict] = []
        self.losses: list[float] = []
        self.stop_requested: str | None = None
        self.started = time.monotonic()
        self.step_started = self.started
        self.step_seconds = 0.0
        self.budget_spent = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_epoch_end(self, args, state, control, **kwargs):
        # a stop mid-epoch ends the epoch too: a signal's step is saved and has no time to evaluate, and a
        # budget's step has just been evaluated and saved; neither twice
        if self.stop_requested or (self.evaluations and self.evaluations[-1]["step"] == state.global_step):
            control.should_evaluate = False
            control.should_save = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        record = {"step": state.global_step, "epoch": state.epoch, **(metrics or {})}
        record = json.loads(json.dumps(record, default=float))  # plain numbers: numpy's do not serialise
        self.evaluations.append(record)
        if self.report_evaluation:
            self.report_evaluation(record)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.monotonic() - self.step_started
        budget = self.max_train_seconds
        spent = (time.monotonic() - self.started) / budget if budget else 0.0
        interrupted, out_of_time, self.budget_spent = self.agree(bool(self.stop_requested), spent > 1.0, spent)
        interrupted, out_of_time = bool(interrupted), bool(out_of_time)
        if interrupted or out_of_time:
            self.stop_requested = self.stop_requested or ("SIGTERM" if interrupted else None)
            control.should_save = True
            control.should_evaluate = not interrupted  # a spot notice leaves no time to evaluate
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        checkpoint_store.mark_complete(folder, {"step": state.global_step, "epoch": state.epoch, "tags": self.tags})
        if self.sync:
            self.sync(folder, folder.name)


class WindowTrainer(Trainer):
    """The Trainer with the pipeline's train sampler, evaluation in stored order, and a padded-token count."""

    def __init__(
        self,
        *args,
        length_buckets: bool,
        sampler_seed: int,
        budget_spent: Callable[[], float] | None = None,
        warmup_ratio: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.length_buckets = length_buckets
        self.sampler_seed = sampler_seed
        self.budget_spent = budget_spent
        self.warmup_ratio = warmup_ratio
        self.padded_tokens = 0

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """With a time budget, the schedule is laid out over the budget as well as the steps
        (:class:`BudgetedLinearSchedule`); without one, the Trainer's own linear schedule."""
        if self.budget_spent is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = BudgetedLinearSchedule(
            optimizer or self.optimizer, num_training_steps, self.warmup_ratio, self.budget_spent
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None):
        if not self.length_buckets:
            return super()._get_train_sampler(train_dataset)
        return LengthBucketSampler(self.train_dataset.lengths, self._train_batch_size, self.sampler_seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.padded_tokens += int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_eval_sampler(self, eval_dataset):
        # predictions merge back to receipts by window position: evaluation keeps the stored order
        # (the Trainer would otherwise group evaluation windows by length too)
        return torch.utils.data.SequentialSampler(eval_dataset)
