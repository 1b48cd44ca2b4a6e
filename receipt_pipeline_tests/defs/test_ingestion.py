"""The source assets materialised through a real Dagster instance against the emulator."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from receipt_pipeline.core import storage, word_table
from receipt_pipeline.core.settings import DeploymentSettings, SettingsError
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import ingestion
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.core.test_dynamo_reader import IMAGE_A, _bad_items, _labelled_receipt
from receipt_pipeline_tests.dynamo_items import put_items


def _local_settings(tmp_path, table: str, sroie_dir: str | None = None) -> DeploymentSettings:
    env = {"RECEIPT_PIPELINE_DATA_DIR": str(tmp_path / "data"), "RECEIPTS_TABLE": table}
    if sroie_dir:
        env["SROIE_DIR"] = sroie_dir
    return DeploymentSettings.from_env(env)


def _materialize(settings: DeploymentSettings, asset, run_config: dict | None = None, **kwargs):
    return dg.materialize(
        [asset],
        resources=resources_for(settings),
        run_config=run_config or {},
        instance=dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    [materialization] = result.asset_materializations_for_node(key)
    return {name: value.value for name, value in materialization.metadata.items()}


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The failed step's error with its causes, as the UI shows it."""
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(failure.step_failure_data.error)


def test_raw_receipt_words_materialises_and_loads_back_through_definitions(tmp_path, receipts_table):
    put_items(receipts_table, _labelled_receipt())
    settings = _local_settings(tmp_path, receipts_table)

    result = _materialize(settings, ingestion.raw_receipt_words)

    assert result.success
    metadata = _metadata(result, "raw_receipt_words")
    assert metadata["table"] == receipts_table
    assert metadata["receipts"] == 1
    assert metadata["dagster/row_count"] == 4
    assert metadata["labelled_words"] == 3
    assert "| MERCHANT_NAME | 2 |" in metadata["labelled_words_per_label"]
    assert metadata["skipped_items"] == 0
    assert metadata["newest_timestamp_added"] == "2026-02-01T00:00:00"
    # the snapshot the split and the checkpoint carry on: labels by name, read from the keys
    snapshot = build_definitions(settings).load_asset_value("raw_receipt_words").attrs[word_table.SNAPSHOT_ATTR]
    assert snapshot["per_label"] == {"GRAND_TOTAL": 1, "MERCHANT_NAME": 2}
    assert [c.name for c in metadata["dagster/column_schema"].columns][:4] == [
        "source",
        "source_split",
        "image_id",
        "receipt_id",
    ]
    assert (tmp_path / "data" / "assets" / "raw_receipt_words.parquet").is_file()

    loaded = build_definitions(settings).load_asset_value("raw_receipt_words")
    assert isinstance(loaded, pd.DataFrame)
    assert loaded["text"].tolist() == ["ACME", "MART", "TOTAL", "12.50"]
    assert set(loaded["image_id"]) == {IMAGE_A}


def test_bad_items_are_reported_in_metadata_and_the_threshold_fails_the_asset(tmp_path, receipts_table):
    put_items(receipts_table, _labelled_receipt() + _bad_items())
    settings = _local_settings(tmp_path, receipts_table)

    tolerant = _materialize(
        settings, ingestion.raw_receipt_words, {"ops": {"raw_receipt_words": {"config": {"max_bad_share": 0.9}}}}
    )
    metadata = _metadata(tolerant, "raw_receipt_words")
    assert metadata["skipped_items"] == 5
    assert metadata["skipped_items_by_reason"]["label_without_word"] == 1
    assert len(metadata["skipped_item_keys"]) == 5

    strict = _materialize(settings, ingestion.raw_receipt_words, raise_on_error=False)
    assert not strict.success
    message = _failure_message(strict)
    assert receipts_table in message and "threshold" in message


def test_label_merges_come_from_run_config(tmp_path, receipts_table):
    put_items(receipts_table, _labelled_receipt())
    config = {"label_merges": {"GRAND_TOTAL": "AMOUNT"}, "strategy": "scan", "read_parallelism": 2}
    result = _materialize(
        _local_settings(tmp_path, receipts_table),
        ingestion.raw_receipt_words,
        {"ops": {"raw_receipt_words": {"config": config}}},
    )
    assert "| AMOUNT | 1 |" in _metadata(result, "raw_receipt_words")["labelled_words_per_label"]


def test_prod_keeps_artifacts_in_s3_and_reads_them_back(receipts_table, artifacts_bucket):
    put_items(receipts_table, _labelled_receipt())
    settings = DeploymentSettings.from_env(
        {
            "RECEIPT_PIPELINE_DEPLOYMENT": "prod",
            "RECEIPTS_TABLE": receipts_table,
            "RECEIPT_PIPELINE_BUCKET": artifacts_bucket,
        }
    )
    assert settings.artifact_root == f"s3://{artifacts_bucket}"

    result = _materialize(settings, ingestion.raw_receipt_words)

    uri = f"s3://{artifacts_bucket}/assets/raw_receipt_words.parquet"
    assert _metadata(result, "raw_receipt_words")["stored_at"] == uri
    assert storage.exists(uri)
    loaded = build_definitions(settings).load_asset_value("raw_receipt_words")
    assert len(loaded) == 4


def test_prod_without_its_table_and_bucket_is_refused():
    with pytest.raises(SettingsError, match="RECEIPTS_TABLE and RECEIPT_PIPELINE_BUCKET"):
        DeploymentSettings.from_env({"RECEIPT_PIPELINE_DEPLOYMENT": "prod"})
    with pytest.raises(SettingsError, match="expected one of local, prod"):
        DeploymentSettings.from_env({"RECEIPT_PIPELINE_DEPLOYMENT": "staging"})


def test_local_deployment_without_the_emulator_endpoint_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    result = _materialize(_local_settings(tmp_path, "receipts"), ingestion.raw_receipt_words, raise_on_error=False)
    assert not result.success
    assert "AWS_ENDPOINT_URL is not set" in _failure_message(result)


def test_asset_keys_and_groups():
    defs = build_definitions(DeploymentSettings.from_env({}))
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert {"raw_receipt_words", "sroie_receipts"} <= set(specs)
    assert all(len(spec.key.path) == 1 for spec in specs.values()), "groups, not key prefixes"
    assert specs["raw_receipt_words"].group_name == specs["sroie_receipts"].group_name == "ingestion"
    assert specs["receipts_table"].group_name == "ingestion"
    assert dg.AssetKey("receipts_table") in {dep.asset_key for dep in specs["raw_receipt_words"].deps}


def test_observing_the_table_versions_its_valid_labels(receipts_table, tmp_path):
    # dagster exports no top-level observe(); the in-process one lives here
    from dagster._core.definitions.observe import observe as observe_assets

    from receipt_pipeline_tests.dynamo_items import label_item, put_items

    settings = _local_settings(tmp_path, receipts_table)
    instance = dg.DagsterInstance.ephemeral()
    put_items(receipts_table, [label_item("img-1", 1, 1, 1, "DATE", when="2026-02-01T00:00:00")])

    def observe() -> tuple[str, dict]:
        result = observe_assets([ingestion.receipts_table], resources=resources_for(settings), instance=instance)
        [event] = result.asset_observations_for_node("receipts_table")
        return event.tags["dagster/data_version"], {k: v.value for k, v in event.metadata.items()}

    version, metadata = observe()
    assert metadata["valid_labels"] == 1 and metadata["newest_valid_label"] == "2026-02-01T00:00:00"
    # the label is read from the key, as the users' writer keeps it (no `label` attribute)
    assert metadata["valid_labels_per_label"].splitlines()[2:] == ["| DATE | 1 |"]
    assert observe()[0] == version
    put_items(receipts_table, [label_item("img-1", 1, 1, 2, "DATE", when="2026-03-01T00:00:00")])
    newer, metadata = observe()
    assert newer != version and metadata["valid_labels"] == 2


def test_sroie_receipts_reports_coverage_and_problems_as_metadata(tmp_path, shared_sroie_dir):
    settings = _local_settings(tmp_path, "unused", sroie_dir=str(shared_sroie_dir))

    result = _materialize(settings, ingestion.sroie_receipts)

    metadata = _metadata(result, "sroie_receipts")
    for field in ("company", "date", "address", "total"):
        assert isinstance(metadata[f"coverage/{field}"], float)
        assert metadata[f"coverage/{field}"] >= 0.95
    assert metadata["receipts_per_split"] == {"train": 626}
    assert metadata["problems"] == sum(metadata["problems_by_reason"].values()) > 0
    assert all(":" in line for line in metadata["problem_files"])
    words = build_definitions(settings).load_asset_value("sroie_receipts")
    assert metadata["dagster/row_count"] == len(words)
    assert set(words["source"]) == {"sroie"} and set(words["source_split"]) == {"train"}
    assert list(words.columns) == word_table.COLUMNS, "the same table shape as raw_receipt_words"


def test_sroie_receipts_without_a_folder_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("SROIE_DIR", raising=False)
    result = _materialize(_local_settings(tmp_path, "unused"), ingestion.sroie_receipts, raise_on_error=False)
    assert not result.success
    assert "set SROIE_DIR" in _failure_message(result)
