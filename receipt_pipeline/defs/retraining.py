"""Retraining: weekly, and sooner when enough new VALID labels arrive; data runs here, training on the GPU.

Two jobs, so the launcher sends only the training to a GPU instance: ``refresh_training_data`` observes
the table and rebuilds the data assets where Dagster runs; when it succeeds, ``train_after_data_refresh``
requests ``train_evaluate_promote`` (checkpoint, report, production model), which the EC2 launcher runs
on a GPU because it materialises ``layoutlm_checkpoint``.
"""

from __future__ import annotations

import dagster as dg

from receipt_pipeline.core.dynamo_reader import label_snapshot
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs.ingestion import TABLE_KEY, snapshot_metadata
from receipt_pipeline.defs.resources import PipelineSettings

TRIGGER_TAG = "receipt_pipeline/retrain_trigger"
DATA_RUN_TAG = "receipt_pipeline/data_run"
NEW_LABELS_TAG = "receipt_pipeline/new_valid_labels"
CHECKPOINT_KEY = dg.AssetKey("layoutlm_checkpoint")

refresh_training_data = dg.define_asset_job(
    "refresh_training_data",
    selection=dg.AssetSelection.assets(
        TABLE_KEY, "raw_receipt_words", "sroie_receipts", "bio_receipt_split", "windowed_tensors"
    ),
    description="Observe the receipts table and rebuild the split and the windows; training follows on success.",
)
train_evaluate_promote = dg.define_asset_job(
    "train_evaluate_promote",
    selection=dg.AssetSelection.assets("layoutlm_checkpoint", "evaluation_report", "production_model"),
    description="Train on the current windows (a GPU instance in prod), score the model, promote it if its F1 holds.",
)
RETRAIN_JOBS = (refresh_training_data.name, train_evaluate_promote.name)
PRODUCTION_KEY = dg.AssetKey("production_model")
PROMOTION_RUN_TAG = "receipt_pipeline/promotion_run"
MODEL_VERSION_TAG = "receipt_pipeline/model_version"
put_model_to_work = dg.define_asset_job(
    "put_model_to_work",
    selection=dg.AssetSelection.assets("exported_model", "receipt_predictions"),
    description="Export the production model (ONNX, Core ML) and run it over the table's receipts, proposing "
    "labels where the deployment writes proposals.",
)


def trained_valid_labels(instance: dg.DagsterInstance, table: str) -> int | None:
    """The VALID label count of ``table`` when the newest checkpoint trained on it had its data read; None
    before any. Checkpoints of another table (``layoutlm-cli train --dynamo-table``) or of SROIE alone are
    passed over: a count is compared only with a count of the same table."""
    cursor = None
    while True:
        page = instance.fetch_materializations(CHECKPOINT_KEY, limit=100, cursor=cursor)
        for record in page.records:
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            recorded, count = metadata.get("table"), metadata.get("table_valid_labels")
            if recorded is not None and recorded.value == table and count is not None:
                return int(count.value)
        if not page.has_more:
            return None
        cursor = page.cursor


def retrain_in_progress(instance: dg.DagsterInstance) -> list[str]:
    status = dg.DagsterRunStatus
    unfinished = [
        status.QUEUED,
        status.NOT_STARTED,
        status.STARTING,
        status.STARTED,
        status.CANCELING,
        status.SUSPENDED,
    ]
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=unfinished))
    return [run.run_id for run in runs if run.job_name in RETRAIN_JOBS]


def _on_in(settings: DeploymentSettings, deployments: tuple[str, ...]) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if settings.deployment in deployments else dg.DefaultSensorStatus.STOPPED


def build_weekly_schedule(settings: DeploymentSettings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retrain",
        job=refresh_training_data,
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        tags={TRIGGER_TAG: "schedule"},
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.deployment == "prod"
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain on a cron ({settings.retrain_cron}, RECEIPT_PIPELINE_RETRAIN_CRON).",
    )


def build_new_labels_sensor(settings: DeploymentSettings) -> dg.SensorDefinition:
    threshold = settings.retrain_min_new_labels

    @dg.sensor(
        name="retrain_on_new_labels",
        job=refresh_training_data,
        minimum_interval_seconds=600,
        default_status=_on_in(settings, ("prod",)),
        description=f"Retrain when at least {threshold} VALID labels (RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS) "
        "arrived since the data of the newest checkpoint; records each new table snapshot as an observation.",
    )
    def retrain_on_new_labels(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
        settings.require_aws()
        snapshot = label_snapshot(settings.receipts_table)
        events = []
        if snapshot.version != context.cursor:  # an observation per change, not per tick
            events.append(
                dg.AssetObservation(
                    asset_key=TABLE_KEY,
                    metadata=snapshot_metadata(snapshot, settings.receipts_table),
                    tags={"dagster/data_version": snapshot.version},
                )
            )
        trained = trained_valid_labels(context.instance, settings.receipts_table)
        new = snapshot.labels - (trained or 0)
        reason = None
        if new < threshold and trained is not None:
            reason = (
                f"{new} new VALID labels in {settings.receipts_table} since the data of the newest checkpoint "
                f"trained on it ({trained}), fewer than {threshold}"
            )
        elif busy := retrain_in_progress(context.instance):
            reason = f"{new} new VALID labels, but a retrain is in progress: {busy}"
        if reason:
            return dg.SensorResult(skip_reason=reason, asset_events=events, cursor=snapshot.version)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    # one retrain per table state, however many ticks see it
                    run_key=f"labels:{snapshot.version}",
                    tags={TRIGGER_TAG: "new_labels", NEW_LABELS_TAG: str(new)},
                )
            ],
            asset_events=events,
            cursor=snapshot.version,
        )

    return retrain_on_new_labels


@dg.run_status_sensor(
    name="train_after_data_refresh",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[refresh_training_data],
    request_job=train_evaluate_promote,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When refresh_training_data succeeds, train, score and promote on the data it built.",
)
def train_after_data_refresh(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    data_run = context.dagster_run
    return dg.RunRequest(
        run_key=data_run.run_id,
        tags={DATA_RUN_TAG: data_run.run_id, TRIGGER_TAG: data_run.tags.get(TRIGGER_TAG, "manual")},
    )


def build_put_to_work_sensor(settings: DeploymentSettings) -> dg.SensorDefinition:
    @dg.asset_sensor(
        name="put_new_production_model_to_work",
        asset_key=PRODUCTION_KEY,
        job=put_model_to_work,
        default_status=_on_in(settings, ("prod",)),
        description="When a model is promoted (production_model materialised, by a retrain or by hand), export it "
        "and run it over the table's receipts.",
    )
    def put_new_production_model_to_work(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        metadata = asset_event.asset_materialization.metadata if asset_event.asset_materialization else {}
        version = metadata.get("checkpoint_version")
        return dg.RunRequest(
            # one run per promotion, however many ticks see it
            run_key=f"promotion:{asset_event.run_id}:{asset_event.timestamp}",
            tags={
                PROMOTION_RUN_TAG: asset_event.run_id,
                MODEL_VERSION_TAG: str(version.value) if version is not None else "",
            },
        )

    return put_new_production_model_to_work
