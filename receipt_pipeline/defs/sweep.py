"""Hyperparameter sweeps: one partition of `sweep_trial` per trial, `best_hyperparameters` over them all."""

import json

import dagster as dg
import pydantic
from pydantic import Field

from receipt_pipeline.core import storage, sweep, training_options
from receipt_pipeline.core.checkpoint_store import CheckpointSync
from receipt_pipeline.core.settings import SettingsError
from receipt_pipeline.core.training import TrainingInterrupted, gpu_available, train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline.defs.resources import PipelineSettings
from receipt_pipeline.defs.training import GPU_POOL, run_dir_for
from receipt_pipeline.launcher import tags

GROUP = "sweep"
DEFAULT_STUDY = "layoutlm"
SWEEP_TRIALS = dg.DynamicPartitionsDefinition(name="sweep_trials")


def trial_partition(study: str, index: int) -> str:
    return f"{study}-{index:03d}"


class _SearchConfig(dg.Config):
    study: str = Field(default=DEFAULT_STUDY, description="The Optuna study; partitions are named <study>-<NNN>.")
    max_per_device_batch_size: int | None = Field(
        default=None, ge=1, description="The largest batch a device holds. Default: 32 on a GPU, 8 on a CPU."
    )
    learning_rate: list[float] = Field(default=[1e-5, 5e-5], description="Log-uniform range.")
    weight_decay: list[float] = Field(default=[0.0, 0.1])
    warmup_ratio: list[float] = Field(default=[0.0, 0.2])
    label_smoothing: list[float] = Field(default=[0.0, 0.1])
    effective_batch_sizes: list[int] = Field(default=[8, 16, 32], description="Batch size x accumulation.")
    max_grad_norms: list[float] = Field(default=[], description="Searched when set; 0 turns clipping off.")

    def space(self) -> sweep.SearchSpace:
        return sweep.SearchSpace(
            learning_rate=tuple(self.learning_rate),
            weight_decay=tuple(self.weight_decay),
            warmup_ratio=tuple(self.warmup_ratio),
            label_smoothing=tuple(self.label_smoothing),
            effective_batch_sizes=tuple(self.effective_batch_sizes),
            max_grad_norms=tuple(self.max_grad_norms),
        )


# the search space, and every training setting that is not searched (declared once, in core.training_options),
# with a trial's shorter defaults
SweepTrialConfig = pydantic.create_model(
    "SweepTrialConfig",
    __base__=_SearchConfig,
    **training_options.config_fields(
        exclude=training_options.SEARCHED_BY_SWEEPS,
        defaults={"epochs": 4, "early_stopping_patience": 2},
        bounds={"epochs": {"ge": 3, "le": 5}, "early_stopping_patience": {"ge": 1}},
    ),
)


def _study(settings: PipelineSettings, name: str, seed: int):
    if not settings.optuna_storage:
        raise SettingsError("sweeps keep their Optuna study in a database: set RECEIPT_PIPELINE_OPTUNA_STORAGE")
    return sweep.open_study(name, settings.optuna_storage, seed=seed)


def _trial_metadata(trial: sweep.Trial) -> dict:
    return {
        "trial": trial.number,
        "validation_f1": trial.validation_f1 if trial.validation_f1 is not None else float("nan"),
        "selection_metric": trial.metric,
        "epochs": trial.epochs if trial.epochs is not None else float("nan"),
        "checkpoint": dg.MetadataValue.path(trial.checkpoint or ""),
        "params": dg.MetadataValue.json(trial.params),
    }


@dg.asset(
    group_name=GROUP,
    code_version="1",
    partitions_def=SWEEP_TRIALS,
    kinds={"pytorch", "optuna"},
    tags={tags.GPU: "true"},
    pool=GPU_POOL,
    description="One sweep trial: settings asked from the Optuna study, a short training, the kept model's "
    "validation score on the selection metric told back. Each partition is its own run, so in prod its own "
    "GPU instance.",
)
def sweep_trial(
    context: dg.AssetExecutionContext, config: SweepTrialConfig, settings: PipelineSettings, windowed_tensors: dict
) -> dg.Output[dict]:
    partition = context.partition_key
    study = _study(settings, config.study, config.seed)
    done = sweep.finished_trial(study, partition)
    if done is None:
        base = TrainingOptions.from_config(  # the search ranges share names with the settings they search
            config.model_dump(exclude=set(training_options.SEARCHED_BY_SWEEPS)),
            base_model=settings.base_model,
            max_train_minutes=settings.max_train_minutes,
        )
        try:  # before asking, so a trial on the wrong metric never enters the study
            sweep.rank_by(study, base.selection_metric)
        except sweep.SweepError as error:
            raise dg.Failure(str(error)) from error
        number, params = sweep.ask(study, config.space(), partition)
        max_batch = config.max_per_device_batch_size or sweep.default_max_per_device_batch(gpu_available())
        options = sweep.options_for(params, base, max_batch)
        context.log.info(f"trial {number} of study {config.study}: {json.dumps(params)}")
        run_dir, run_uri = run_dir_for(settings, f"sweep-{partition}")
        try:
            result = train(windowed_tensors, run_dir, options, sync=CheckpointSync(run_uri) if run_uri else None)
        except TrainingInterrupted:
            raise  # the trial stays running: the retried run continues it
        except Exception:
            sweep.fail(study, number)
            raise
        path = storage.join(run_uri, "best") if run_uri else result.best_dir
        # the score that chose the kept model, so a study on a label group ranks by that group
        sweep.tell(study, number, result.best_selection, result.epochs, path)
        done = sweep.finished_trial(study, partition)
    else:
        context.log.info(f"trial {done.number} of {partition} finished before: not trained again")
    value = {
        "study": config.study,
        "partition": partition,
        "trial": done.number,
        "params": done.params,
        "validation_f1": done.validation_f1,
        "selection_metric": done.metric,
        "epochs": done.epochs,
        "checkpoint": done.checkpoint,
    }
    # a trial, once told, is fixed: its number in its study is its version
    return dg.Output(
        value, data_version=dg.DataVersion(f"{config.study}:{done.number}"), metadata=_trial_metadata(done)
    )


class BestHyperparametersConfig(dg.Config):
    study: str = Field(default=DEFAULT_STUDY, description="The Optuna study whose trials to compare.")


@dg.asset(
    group_name=GROUP,
    code_version="1",
    deps=[sweep_trial],
    kinds={"optuna"},
    description="The sweep's best trial by validation score on the study's selection metric (of equal ones, "
    "fewer epochs), with a table of every trial and a plot of that score against learning rate. "
    "layoutlm_checkpoint uses it with use_best_hyperparameters.",
)
def best_hyperparameters(
    context: dg.AssetExecutionContext, config: BestHyperparametersConfig, settings: PipelineSettings
) -> dg.Output[dict]:
    all_trials = sweep.trials(_study(settings, config.study, seed=0))
    try:
        chosen = sweep.best(all_trials)
    except ValueError as error:
        raise dg.Failure(f"study {config.study!r}: {error}") from error
    plot = storage.join(settings.artifact_root, "sweeps", config.study, "f1_against_learning_rate.png")
    storage.write_bytes(plot, sweep.f1_against_learning_rate_png(all_trials))
    context.log.info(
        f"best of {len(all_trials)} trials: {chosen.number} ({chosen.partition}), F1 {chosen.validation_f1}"
    )
    value = {
        "study": config.study,
        "trial": chosen.number,
        "partition": chosen.partition,
        "params": chosen.params,
        "validation_f1": chosen.validation_f1,
        "selection_metric": chosen.metric,
        "epochs": chosen.epochs,
        "trials": len(all_trials),
    }
    return dg.Output(
        value,
        data_version=dg.DataVersion(f"{config.study}:{chosen.number}:{len(all_trials)}"),
        metadata={
            **_trial_metadata(chosen),
            "partition": chosen.partition,
            "trials": len(all_trials),
            "completed_trials": sum(t.state == "COMPLETE" for t in all_trials),
            "all_trials": dg.MetadataValue.md(sweep.markdown_table(all_trials)),
            "f1_against_learning_rate": dg.MetadataValue.path(plot),
        },
    )
