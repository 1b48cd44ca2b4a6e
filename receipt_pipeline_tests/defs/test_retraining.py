"""Retraining triggers: the weekly schedule and the new-labels sensor, evaluated against a real instance."""

from __future__ import annotations

import dagster as dg
import pytest

from receipt_pipeline.core.settings import DeploymentSettings, SettingsError
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import retraining
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.dynamo_items import label_item, put_items


def _settings(tmp_path, table: str, **env: str) -> DeploymentSettings:
    return DeploymentSettings.from_env(
        {"RECEIPT_PIPELINE_DATA_DIR": str(tmp_path / "data"), "RECEIPTS_TABLE": table, **env}
    )


def _labels(count: int, start: int, when: str) -> list[dict]:
    return [label_item("img-1", 1, 1, word, "DATE", when=when) for word in range(start, start + count)]


def test_the_weekly_schedule_takes_its_cron_from_the_deployment_and_starts_the_data_refresh(tmp_path):
    settings = _settings(tmp_path, "t", RECEIPT_PIPELINE_RETRAIN_CRON="15 4 * * 2")
    schedule = build_definitions(settings).resolve_schedule_def("weekly_retrain")
    assert schedule.cron_schedule == "15 4 * * 2" and schedule.job_name == "refresh_training_data"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED, "off on a laptop, on in prod"
    [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    assert request.tags[retraining.TRIGGER_TAG] == "schedule"
    with pytest.raises(SettingsError, match="five cron fields"):
        _settings(tmp_path, "t", RECEIPT_PIPELINE_RETRAIN_CRON="weekly")


def test_prod_turns_the_schedule_and_the_sensor_on(tmp_path):
    settings = DeploymentSettings.from_env(
        {"RECEIPT_PIPELINE_DEPLOYMENT": "prod", "RECEIPTS_TABLE": "t", "RECEIPT_PIPELINE_BUCKET": "b"}
    )
    definitions = build_definitions(settings)
    assert definitions.resolve_schedule_def("weekly_retrain").default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = definitions.resolve_sensor_def("retrain_on_new_labels")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    put_to_work = definitions.resolve_sensor_def("put_new_production_model_to_work")
    assert put_to_work.default_status == dg.DefaultSensorStatus.RUNNING


def test_each_promotion_puts_the_new_model_to_work_once(tmp_path):
    definitions = build_definitions(_settings(tmp_path, "t"))
    sensor = definitions.resolve_sensor_def("put_new_production_model_to_work")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED, "off on a laptop, on in prod"
    job = definitions.resolve_job_def(sensor.job_name)
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey("exported_model"), dg.AssetKey("receipt_predictions")}

    with dg.instance_for_test() as instance:

        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions)
            return sensor.evaluate_tick(context)

        nothing = tick(None)
        assert not nothing.run_requests, "no promotion yet"
        for version in ("v1", "v2"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("production_model", metadata={"checkpoint_version": version})
            )
        promoted = tick(nothing.cursor)
        # an asset sensor sees the newest materialisation since its cursor: the model now in production
        [request] = promoted.run_requests
        assert request.tags[retraining.MODEL_VERSION_TAG] == "v2" and request.run_key.startswith("promotion:")
        assert not tick(promoted.cursor).run_requests, "a promotion is put to work once"
        instance.report_runless_asset_event(
            dg.AssetMaterialization("production_model", metadata={"checkpoint_version": "v3"})
        )
        [again] = tick(promoted.cursor).run_requests
        assert again.tags[retraining.MODEL_VERSION_TAG] == "v3" and again.run_key != request.run_key


def test_the_sensor_retrains_once_enough_valid_labels_arrived_since_the_checkpoints_data(tmp_path, receipts_table):
    settings = _settings(tmp_path, receipts_table, RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS="2")
    sensor = build_definitions(settings).resolve_sensor_def("retrain_on_new_labels")
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def tick() -> dg.SensorResult:
        nonlocal cursor
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"settings": resources_for(settings)["settings"]}
        )
        result = sensor.evaluate_tick(context)
        cursor = result.cursor
        return result

    put_items(receipts_table, _labels(3, start=1, when="2026-02-01T00:00:00"))
    first = tick()
    [request] = first.run_requests
    assert request.job_name in (None, "refresh_training_data") and request.tags[retraining.NEW_LABELS_TAG] == "3"
    [observation] = first.asset_events
    assert observation.asset_key == dg.AssetKey("receipts_table")
    assert observation.tags["dagster/data_version"] == "VALID:3:2026-02-01T00:00:00"

    # the model trained on those three labels
    instance.report_runless_asset_event(
        dg.AssetMaterialization("layoutlm_checkpoint", metadata={"table": receipts_table, "table_valid_labels": 3})
    )
    quiet = tick()
    assert not quiet.run_requests and not quiet.asset_events, "nothing changed: no run, no observation"
    assert "0 new VALID labels" in quiet.skip_message

    put_items(receipts_table, _labels(1, start=4, when="2026-02-02T00:00:00"))
    one = tick()
    assert not one.run_requests and "1 new VALID labels" in one.skip_message and "fewer than 2" in one.skip_message
    assert [e.tags["dagster/data_version"] for e in one.asset_events] == ["VALID:4:2026-02-02T00:00:00"]

    put_items(receipts_table, _labels(1, start=5, when="2026-02-03T00:00:00"))
    [retrain] = tick().run_requests
    assert retrain.tags[retraining.NEW_LABELS_TAG] == "2" and retrain.run_key == "labels:VALID:5:2026-02-03T00:00:00"

    # while a retrain is queued or running, no second one starts
    run = instance.create_run_for_job(build_definitions(settings).resolve_job_def("refresh_training_data"))
    instance.report_dagster_event(
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name), run_id=run.run_id
    )
    put_items(receipts_table, _labels(1, start=6, when="2026-02-04T00:00:00"))
    busy = tick()
    assert not busy.run_requests and "a retrain is in progress" in busy.skip_message and run.run_id in busy.skip_message


def test_the_sensor_compares_the_tables_count_only_with_a_checkpoint_of_the_same_table(tmp_path, receipts_table):
    settings = _settings(tmp_path, receipts_table, RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS="2")
    sensor = build_definitions(settings).resolve_sensor_def("retrain_on_new_labels")
    instance = dg.DagsterInstance.ephemeral()

    def tick() -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=instance, resources={"settings": resources_for(settings)["settings"]}
        )
        return sensor.evaluate_tick(context)

    def checkpoint(metadata: dict) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization("layoutlm_checkpoint", metadata=metadata))

    put_items(receipts_table, _labels(4, start=1, when="2026-02-01T00:00:00"))
    checkpoint({"table": receipts_table, "table_valid_labels": 3})
    # newer checkpoints: `layoutlm-cli train --dynamo-table other` (a table of 100 labels), then SROIE alone
    checkpoint({"table": "other-table", "table_valid_labels": 100})
    checkpoint({"run": "sroie-only"})

    one = tick()
    assert not one.run_requests
    assert f"1 new VALID labels in {receipts_table}" in one.skip_message and "(3)" in one.skip_message

    put_items(receipts_table, _labels(1, start=5, when="2026-02-02T00:00:00"))
    [retrain] = tick().run_requests
    assert retrain.tags[retraining.NEW_LABELS_TAG] == "2"
    assert retraining.trained_valid_labels(instance, "other-table") == 100
    assert retraining.trained_valid_labels(instance, "never-trained-on") is None
