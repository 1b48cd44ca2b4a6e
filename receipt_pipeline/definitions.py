"""The Definitions object. Resources are chosen per deployment by RECEIPT_PIPELINE_DEPLOYMENT (local | prod)."""

from __future__ import annotations

import dagster as dg

from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs import (
    evaluation,
    export,
    gpu_instances,
    inference,
    ingestion,
    promotion,
    retraining,
    sweep,
    training,
    training_data,
)
from receipt_pipeline.defs.resources import resources_for


def build_definitions(settings: DeploymentSettings | None = None) -> dg.Definitions:
    settings = settings or DeploymentSettings.from_env()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [ingestion, training_data, training, evaluation, promotion, sweep, inference, export]
        ),
        asset_checks=[evaluation.f1_not_below_production],
        jobs=[retraining.refresh_training_data, retraining.train_evaluate_promote, retraining.put_model_to_work],
        schedules=[retraining.build_weekly_schedule(settings)],
        sensors=[
            gpu_instances.build_reaper_sensor(settings),
            retraining.build_new_labels_sensor(settings),
            retraining.train_after_data_refresh,
            retraining.build_put_to_work_sensor(settings),
        ],
        resources=resources_for(settings),
    )


defs = build_definitions()
