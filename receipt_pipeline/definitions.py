"""The Definitions object. Resources are chosen per deployment by RECEIPT_PIPELINE_DEPLOYMENT (local | prod)."""

from __future__ import annotations

import dagster as dg

from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs import gpu_instances, ingestion, training, training_data
from receipt_pipeline.defs.resources import resources_for


def build_definitions(settings: DeploymentSettings | None = None) -> dg.Definitions:
    settings = settings or DeploymentSettings.from_env()
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingestion, training_data, training]),
        resources=resources_for(settings),
        sensors=[gpu_instances.build_reaper_sensor(settings)],
    )


defs = build_definitions()
