"""The trained checkpoint: a training run on the windows, on a GPU instance in prod."""

import datetime as dt
import json
import tempfile
from pathlib import Path

import dagster as dg
import pydantic
from pydantic import Field

from receipt_pipeline.core import distributed, storage, sweep, training_options, word_table
from receipt_pipeline.core.checkpoint_store import CheckpointSync, restore_latest
from receipt_pipeline.core.settings import environment
from receipt_pipeline.core.training import TrainingError, gpu_available, matching_tokenizer, train, weights_digest
from receipt_pipeline.core.training_options import TrainingOptions, TrainingOptionsError
from receipt_pipeline.defs.resources import PipelineSettings
from receipt_pipeline.launcher import ec2, tags

TRAINING_GROUP = "training"
GPU_POOL = "gpu"


# every training setting comes from core.training_options, declared once; these four are the asset's own
LayoutLMCheckpointConfig = pydantic.create_model(
    "LayoutLMCheckpointConfig",
    __base__=dg.Config,
    __doc__="layoutlm_checkpoint's config: every training setting, plus where the run goes.",
    **training_options.config_fields(),
    run_name=(
        str | None,
        Field(
            default=None, description="The run folder's name; default: the Dagster run's root id, so retries resume."
        ),
    ),
    output_path=(
        str | None,
        Field(default=None, description="Where run folders go: a folder or s3:// prefix; default: <artifacts>/runs."),
    ),
    processes=(
        int | None,
        Field(
            default=None,
            ge=1,
            description="Training processes on the instance, under torchrun (DDP); default: one per GPU, so an "
            "instance type with several GPUs trains on all of them. The batch size is per process.",
        ),
    ),
    use_best_hyperparameters=(
        bool,
        Field(
            default=False,
            description="Take learning rate, weight decay, warmup, label smoothing, effective batch (and max grad "
            "norm, if searched) from the materialised best_hyperparameters; epochs and the rest from this config.",
        ),
    ),
)


def run_dir_for(settings: PipelineSettings, run_name: str, runs_root: str | None = None) -> tuple[Path, str | None]:
    """The local folder of a training run and, when runs live in S3, the prefix its checkpoints sync to.

    ``runs_root`` (a folder or ``s3://`` prefix) holds the run folders; default ``<artifacts>/runs``.
    """
    root = runs_root or storage.join(settings.artifact_root, "runs")
    if storage.is_s3(root):
        scratch = Path(environment().RECEIPT_PIPELINE_SCRATCH or tempfile.gettempdir()) / "receipt-pipeline"
        return scratch / "runs" / run_name, storage.join(root, run_name)
    return Path(root) / run_name, None


@dg.asset(
    group_name=TRAINING_GROUP,
    code_version="2",
    kinds={"pytorch", "huggingface"},
    tags={tags.GPU: "true"},
    # the prod instance limits this pool (concurrency > pools, granularity run), so runs that train wait in
    # the queue, without an instance, while the GPU limit is reached
    pool=GPU_POOL,
    description="LayoutLM token classifier trained with the Hugging Face Trainer, best by validation F1.",
)
def layoutlm_checkpoint(
    context: dg.AssetExecutionContext,
    config: LayoutLMCheckpointConfig,
    settings: PipelineSettings,
    windowed_tensors: dict,
) -> dg.Output[dict]:
    manifest = windowed_tensors
    try:  # before anything is restored or started: a base model whose tokenizer cut other windows is refused,
        # and label weights or a selection group naming labels the windows do not have
        options = TrainingOptions.from_config(
            config.model_dump(), base_model=settings.base_model, max_train_minutes=settings.max_train_minutes
        )
        options.check_labels(manifest["labels"])
        tokenizer = matching_tokenizer(options.base_model, manifest)
    except (TrainingError, TrainingOptionsError) as error:
        raise dg.Failure(str(error)) from error
    run_name = config.run_name or context.run.root_run_id or context.run.run_id
    run_dir, run_uri = run_dir_for(settings, run_name, config.output_path)
    sync = CheckpointSync(run_uri) if run_uri else None
    if run_uri and not any((run_dir / "checkpoints").glob("checkpoint-*/COMPLETE")):
        restored = restore_latest(run_uri, run_dir)
        if restored:
            context.log.info(f"resuming from {run_uri}/{restored.name}")

    def log_evaluation(record: dict) -> None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
        context.log.info(f"evaluation at step {record['step']}: {json.dumps(shown)}")

    best = None
    if config.use_best_hyperparameters:
        best = _best_hyperparameters(settings)
        resolved = options.resolved(gpu=gpu_available())
        options = sweep.options_for(best["params"], resolved, resolved.per_device_batch_size)
        context.log.info(
            f"hyperparameters of sweep {best['study']} trial {best['trial']}: {json.dumps(best['params'])}"
        )
    processes = distributed.processes_per_node(config.processes)
    if processes > 1:
        context.log.info(f"training in {processes} processes under torchrun")
        result = distributed.train_distributed(manifest, run_dir, options, processes, sync_uri=run_uri)
        for record in result.evaluations:
            if "step" in record:
                log_evaluation(record)
    else:
        result = train(manifest, run_dir, options, on_evaluate=log_evaluation, sync=sync, tokenizer=tokenizer)
    path = storage.join(run_uri, "best") if run_uri else result.best_dir
    gpu = _gpu_instance_metadata(context.run.tags)
    version = weights_digest(result.best_dir)
    lineage = {
        "windowed_tensors_version": manifest["folder"].rstrip("/").rsplit("/", 1)[-1],
        "bio_receipt_split_version": manifest.get("split_content_hash", ""),
        "source_snapshots": manifest.get("source_snapshots", {}),
    }
    value = {
        "path": path,
        "run": run_name,
        "version": version,
        "dagster_run_id": context.run.run_id,
        "tags": manifest["tags"],
        "labels": manifest["labels"],
        "best_validation_f1": result.best_f1,
        **lineage,
    }
    table = lineage["source_snapshots"].get(word_table.SOURCE_DYNAMO)
    return dg.Output(
        value,
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(path),
            "run": run_name,
            "best_validation_f1": result.best_f1,
            # what selected the model kept (overall entity F1 or a label group's macro F1) and its score
            "selection_metric": result.selection_metric,
            "best_validation_selection": result.best_selection,
            "epochs": result.epochs,
            "steps": result.steps,
            "real_tokens_per_second": result.real_tokens_per_second,
            "padding_efficiency": result.real_tokens / result.padded_tokens if result.padded_tokens else float("nan"),
            "processes": processes,
            "wall_seconds": result.wall_seconds,
            "device": result.device,
            "peak_memory_mib": result.peak_memory_bytes / 2**20,
            "first_loss": result.first_loss if result.first_loss is not None else float("nan"),
            "last_loss": result.last_loss if result.last_loss is not None else float("nan"),
            "resumed_from": result.resumed_from or "",
            "hyperparameters": dg.MetadataValue.json(result.hyperparameters),
            "batch_plan": result.batch_plan,
            "outside_offset": result.outside_offset,
            "tag_weights": dg.MetadataValue.json(result.tag_weights),
            "label_weights": dg.MetadataValue.json(result.label_weights),
            **({"sweep_trial": f"{best['study']} trial {best['trial']} ({best['partition']})"} if best else {}),
            "evaluations": dg.MetadataValue.json(result.evaluations),
            "weights_sha256": version,
            "windowed_tensors_version": lineage["windowed_tensors_version"],
            "bio_receipt_split_version": lineage["bio_receipt_split_version"],
            # the table as it was read for this model's data: the retrain sensor counts labels since
            **(_table_snapshot_metadata(table) if table else {}),
            **gpu,
        },
    )


def _best_hyperparameters(settings: PipelineSettings) -> dict:
    """The best_hyperparameters asset's stored value (see defs.sweep), read where the IO manager keeps it."""
    uri = storage.join(settings.artifact_root, "assets", "best_hyperparameters.json")
    if not storage.exists(uri):
        raise dg.Failure(f"use_best_hyperparameters is set but best_hyperparameters has not been materialised ({uri})")
    return json.loads(storage.read_bytes(uri))


def _table_snapshot_metadata(snapshot: dict) -> dict:
    return {
        "table": snapshot["table"],
        "table_valid_labels": snapshot["labels"],
        "table_newest_valid_label": snapshot["newest_timestamp"],
        "table_valid_labels_per_label": dg.MetadataValue.json(snapshot["per_label"]),
    }


def _gpu_instance_metadata(run_tags: dict[str, str]) -> dict:
    """The EC2 instance the launcher recorded on the run, and its cost so far: hourly price x billed time."""
    instance_id = run_tags.get(tags.INSTANCE_ID)
    if not instance_id:
        return {}
    price = run_tags.get(tags.HOURLY_PRICE)
    launched = run_tags.get(tags.LAUNCH_TIME)
    cost = ec2.billed_cost(float(price), dt.datetime.fromisoformat(launched)) if price and launched else None
    return {
        "ec2_instance_id": instance_id,
        "ec2_instance_type": run_tags.get(tags.RECORDED_INSTANCE_TYPE, ""),
        "ec2_market": run_tags.get(tags.RECORDED_MARKET, ""),
        "gpu_hourly_price_usd": float(price) if price else float("nan"),
        "gpu_cost_usd": cost if cost is not None else float("nan"),
    }
