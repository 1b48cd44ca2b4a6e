"""Hyperparameter sweeps: Optuna (seeded TPE) asks for each trial's settings, its study kept in a database.

Each trial is trained in its own run (a partition of the sweep asset), so the study lives in a database
that every run reaches: SQLite locally, the deployment's Postgres in prod. A trial's run asks the study
for settings, trains, and tells it the kept model's validation score on the selection metric (overall entity
F1, or macro F1 over a label group: ``TrainingOptions.selection_metric``), the score that chose that model;
later trials learn from finished ones. A study ranks its trials by one metric, recorded on the study by its
first trial. A retry of a trial's run continues the trial it already asked for instead of asking again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.training_options import ENTITY_F1, TrainingOptions

METRIC_ATTR = "selection_metric"
PARTITION_ATTR = "partition"
EPOCHS_ATTR = "epochs"
CHECKPOINT_ATTR = "checkpoint"


@dataclass(frozen=True)
class SearchSpace:
    learning_rate: tuple[float, float] = (1e-5, 5e-5)  # log-uniform
    weight_decay: tuple[float, float] = (0.0, 0.1)
    warmup_ratio: tuple[float, float] = (0.0, 0.2)
    label_smoothing: tuple[float, float] = (0.0, 0.1)
    effective_batch_sizes: tuple[int, ...] = (8, 16, 32)  # batch size x gradient accumulation
    max_grad_norms: tuple[float, ...] = ()  # empty: not searched; 0 turns clipping off

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        space = {
            "learning_rate": FloatDistribution(*self.learning_rate, log=True),
            "weight_decay": FloatDistribution(*self.weight_decay),
            "warmup_ratio": FloatDistribution(*self.warmup_ratio),
            "label_smoothing": FloatDistribution(*self.label_smoothing),
            "effective_batch_size": CategoricalDistribution(list(self.effective_batch_sizes)),
        }
        if self.max_grad_norms:
            space["max_grad_norm"] = CategoricalDistribution(list(self.max_grad_norms))
        return space


@dataclass(frozen=True)
class Trial:
    number: int
    partition: str
    params: dict
    state: str
    validation_f1: float | None  # the kept model's validation score on the study's metric
    epochs: float | None
    checkpoint: str | None
    metric: str = ENTITY_F1


class SweepError(ExplainedError, ValueError):
    pass


def open_study(name: str, storage_url: str, seed: int = 42) -> optuna.Study:
    """The study ``name`` in ``storage_url`` (an SQLAlchemy URL), created on first use; maximises F1."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage_url, direction="maximize", load_if_exists=True)
    if "seed" not in study.user_attrs:
        study.set_user_attr("seed", seed)
    return study


def rank_by(study: optuna.Study, metric: str) -> str:
    """Records ``metric`` as the study's ranking metric on its first trial; refuses another one later, since
    trials scored on different metrics cannot be ranked against each other."""
    ranked_by = study.user_attrs.get(METRIC_ATTR)
    if ranked_by is None:
        study.set_user_attr(METRIC_ATTR, metric)
    elif ranked_by != metric:
        raise SweepError(
            f"study {study.study_name!r} ranks its trials by {ranked_by!r}; this trial selects by {metric!r}: "
            f"set selection_metric to {ranked_by!r} or start a new study"
        )
    return metric


def _seeded_sampler(study: optuna.Study) -> optuna.samplers.TPESampler:
    # every trial runs in a process of its own, each with a new sampler: seeded with the study's seed
    # alone, each would draw the same first random settings; the trial count makes each draw its own
    seed = int(study.user_attrs.get("seed", 42)) + len(study.get_trials(deepcopy=False))
    return optuna.samplers.TPESampler(seed=seed)


def ask(study: optuna.Study, space: SearchSpace, partition: str) -> tuple[int, dict]:
    """The trial of ``partition``: the one already asked for if it is still running (a retried run), else a new one."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(PARTITION_ATTR) == partition:
            return trial.number, dict(trial.params)
    study.sampler = _seeded_sampler(study)
    trial = study.ask(space.distributions())
    trial.set_user_attr(PARTITION_ATTR, partition)
    return trial.number, dict(trial.params)


def finished_trial(study: optuna.Study, partition: str) -> Trial | None:
    """The completed trial of ``partition``, so re-materialising a partition does not train it twice."""
    for trial in trials(study):
        if trial.partition == partition and trial.state == TrialState.COMPLETE.name:
            return trial
    return None


def _outcome_attr(number: int, name: str) -> str:
    return f"trial-{number}:{name}"


def tell(study: optuna.Study, number: int, validation_f1: float, epochs: float, checkpoint: str) -> None:
    # a retried run holds the trial's number, not its Trial object, and the public API sets a trial's own
    # attributes only through that object: the outcome is kept on the study, under the trial's number
    study.set_user_attr(_outcome_attr(number, EPOCHS_ATTR), float(epochs))
    study.set_user_attr(_outcome_attr(number, CHECKPOINT_ATTR), checkpoint)
    study.tell(number, float(validation_f1))


def fail(study: optuna.Study, number: int) -> None:
    study.tell(number, state=TrialState.FAIL)


# The largest batch a trial puts on one device when its config names none. A GPU steps through 32 windows of
# layoutlm-base in the time of 8 (BENCHMARKS.md, GPU), and 32 full windows need under 8 GiB, which every GPU
# instance type has; so no trial of the default effective batches accumulates there.
DEFAULT_MAX_PER_DEVICE_BATCH = {"gpu": 32, "cpu": 8}


def default_max_per_device_batch(gpu: bool) -> int:
    return DEFAULT_MAX_PER_DEVICE_BATCH["gpu" if gpu else "cpu"]


def options_for(params: dict, base: TrainingOptions, max_per_device_batch: int) -> TrainingOptions:
    """``base`` with a trial's settings: the effective batch split into what fits a device x accumulation."""
    effective = int(params["effective_batch_size"])
    per_device = min(max_per_device_batch, effective)
    chosen = {
        "learning_rate": float(params["learning_rate"]),
        "weight_decay": float(params["weight_decay"]),
        "warmup_ratio": float(params["warmup_ratio"]),
        "label_smoothing": float(params["label_smoothing"]),
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": max(1, effective // per_device),
    }
    if "max_grad_norm" in params:
        chosen["max_grad_norm"] = float(params["max_grad_norm"])
    return replace(base, **chosen)


def trials(study: optuna.Study) -> list[Trial]:
    outcomes = study.user_attrs
    metric = str(outcomes.get(METRIC_ATTR, ENTITY_F1))
    return [
        Trial(
            number=t.number,
            partition=str(t.user_attrs.get(PARTITION_ATTR, "")),
            params=dict(t.params),
            state=t.state.name,
            validation_f1=t.value,
            epochs=outcomes.get(_outcome_attr(t.number, EPOCHS_ATTR)),
            checkpoint=outcomes.get(_outcome_attr(t.number, CHECKPOINT_ATTR)),
            metric=metric,
        )
        for t in study.get_trials(deepcopy=False)
    ]


def best(finished: list[Trial]) -> Trial:
    """The highest validation score on the study's metric; of equal ones, the one that trained fewer epochs."""
    complete = [t for t in finished if t.state == TrialState.COMPLETE.name and t.validation_f1 is not None]
    if not complete:
        raise ValueError("no completed trial: run the sweep's trials first")
    return max(complete, key=lambda t: (t.validation_f1, -(t.epochs or 0.0), -t.number))


def markdown_table(all_trials: list[Trial]) -> str:
    names = sorted({name for t in all_trials for name in t.params})
    metric = all_trials[0].metric if all_trials else ENTITY_F1
    header = f"| trial | partition | state | validation {metric} | epochs | " + " | ".join(names) + " |\n"
    header += "|---:|---|---|---:|---:|" + "---:|" * len(names) + "\n"
    rows = []
    for t in sorted(all_trials, key=lambda t: t.number):
        f1 = f"{t.validation_f1:.4f}" if t.validation_f1 is not None else ""
        epochs = f"{t.epochs:.1f}" if t.epochs is not None else ""
        values = " | ".join(_cell(t.params.get(name)) for name in names)
        rows.append(f"| {t.number} | {t.partition} | {t.state} | {f1} | {epochs} | {values} |")
    return header + "\n".join(rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def f1_against_learning_rate_png(all_trials: list[Trial]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in all_trials if t.validation_f1 is not None]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter([t.params["learning_rate"] for t in complete], [t.validation_f1 for t in complete])
    for t in complete:
        axes.annotate(str(t.number), (t.params["learning_rate"], t.validation_f1), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel(f"validation {complete[0].metric if complete else ENTITY_F1} of the kept model")
    axes.set_title("sweep trials")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
