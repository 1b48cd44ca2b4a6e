"""receipt_predictions through Dagster against the emulator: its tables and metadata, the proposals it writes
(once), the receipts each scope reads, and its lineage from production_model."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from receipt_pipeline import cli
from receipt_pipeline.core import dynamo_schema, inference, promotion, storage
from receipt_pipeline.core.dynamo_reader import read_receipts_to_predict
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import inference as inference_defs
from receipt_pipeline.defs import ingestion
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.core.test_inference import receipt_items
from receipt_pipeline_tests.core.test_proposals import _item
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata
from receipt_pipeline_tests.dynamo_items import label_item, put_items

NEW, LABELLED, LATE = (
    "aaaaaaaa-2222-4000-8000-000000000001",
    "bbbbbbbb-2222-4000-8000-000000000002",
    "cccccccc-2222-4000-8000-000000000003",
)
# production_model as a run of its own left it, loaded through the IO manager like any materialised input
ASSETS = [dg.AssetSpec("production_model").with_io_manager_key("io_manager"), inference_defs.receipt_predictions]
OLD = "2024-01-01T00:00:00"


def _run(settings, instance, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        resources=resources_for(settings),
        instance=instance,
        run_config={"ops": {"receipt_predictions": {"config": {"min_confidence": 0.0, **config}}}},
    )


@pytest.fixture
def deployment(tmp_path, receipts_table, small_production_model):
    """A table of one unlabelled receipt (one of its words already labelled by a person, as the model will
    label it) and one validated receipt; production_model as materialised for the model of the session."""
    settings = _local_settings(tmp_path, receipts_table)
    put_items(
        receipts_table,
        [*receipt_items(NEW, added=OLD), *receipt_items(LABELLED, added=OLD)]
        + [label_item(LABELLED, 1, 4, 2, "GRAND_TOTAL", "VALID")],
    )
    loaded = inference.load_model(str(small_production_model))
    predicted = inference.predict_words(loaded, read_receipts_to_predict(receipts_table).frame)
    labelled = predicted.words.dropna(subset=["label"]).iloc[0]
    person = label_item(NEW, 1, int(labelled.line_id), int(labelled.word_id), labelled.label, "NEEDS_REVIEW")
    put_items(receipts_table, [person])
    production = promotion.current_production(str(small_production_model))
    storage.write_bytes(
        storage.join(settings.artifact_root, "assets", "production_model.json"),
        json.dumps({**production, "path": str(small_production_model)}).encode(),
    )
    return settings, receipts_table, person, loaded.version


def test_predictions_tables_metadata_and_proposals_written_once(deployment, capsys):
    settings, table, person, version = deployment
    instance = dg.DagsterInstance.ephemeral()
    result = _run(settings, instance)
    metadata = _metadata(result, "receipt_predictions")
    assert metadata["model_version"] == version and metadata["scope"] == "unlabelled"
    assert (metadata["receipts_in_table"], metadata["receipts"], metadata["words"]) == (2, 1, 8)
    assert metadata["confidence_histogram"].startswith("![word confidence](data:image/png;base64,")
    assert "| label | words |" in metadata["labels_per_kind"] and "review_priority" in metadata["review_queue"]

    document = json.loads(
        storage.read_bytes(storage.join(settings.artifact_root, "assets", "receipt_predictions.json"))
    )
    words = pd.read_parquet(document["words_table"])
    receipts = pd.read_parquet(document["receipts_table"])
    assert len(words) == 8 and set(words["image_id"]) == {NEW}
    assert words["confidence"].between(0, 1).all() and list(words.columns) == inference.WORD_COLUMNS
    assert receipts["key"].tolist() == [f"dynamo/{NEW}/00001"] and receipts["review_priority"].tolist() == [1]
    assert document["examples"][0]["key"] == f"dynamo/{NEW}/00001" and len(document["examples"][0]["words"]) == 8
    assert set(document["examples"][0]["fields"]) == set(inference.FIELD_LABELS)
    # the line-item table beside them, as parquet and CSV, one row per item the receipts table counts
    items = pd.read_parquet(document["line_items_table"])
    assert list(items.columns) == inference.ITEM_COLUMNS and len(pd.read_csv(document["line_items_csv"])) == len(items)
    assert len(items) == receipts["items"].sum() == metadata["line_items"] == document["line_items"]
    assert metadata["receipts_not_adding_up"] == int(receipts["items_flagged"].sum())
    assert document["examples"][0]["items_check"]["status"] in ("adds_up", "does_not_add_up", "unchecked")

    # every labelled word proposed (min_confidence 0), but the one a person had labelled so already
    entities = words.dropna(subset=["label"])
    proposals = document["proposals"]
    assert proposals["enabled"] and proposals["candidates"] == len(entities) > 0
    assert (metadata["proposals_written"], metadata["proposals_already_labelled"]) == (len(entities) - 1, 1)
    assert metadata["proposals_failed"] == 0
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == inference_defs.CHECK_PROPOSALS and check.passed
    assert _item(table, dynamo_schema.word_key_of(person), dynamo_schema.label_in_keys(person)) == person
    for word in entities.itertuples():
        item = _item(table, (NEW, 1, word.line_id, word.word_id), word.label)
        if item != person:
            assert item["validation_status"] == "PENDING" and item["label_proposed_by"] == f"receipt_pipeline:{version}"

    # the training read does not take them for training data
    raw = dg.materialize([ingestion.raw_receipt_words], resources=resources_for(settings), instance=instance)
    frame = raw.asset_value("raw_receipt_words")
    assert set(frame["image_id"]) == {LABELLED} and frame["label"].dropna().tolist() == ["GRAND_TOTAL"]

    # what `make demo` ends with
    cli._print_predictions(Path(settings.artifact_root) / "assets" / "receipt_predictions.json")
    said = capsys.readouterr().out
    assert f"Predictions on 1 unlabelled receipt (8 words), model {version}" in said
    assert f"dynamo/{NEW}/00001, first in the review queue" in said and "line items (" in said
    assert f"label proposals written to {table}: {len(entities) - 1} (PENDING" in said and "1 already there" in said

    again = _run(settings, instance)
    repeated = _metadata(again, "receipt_predictions")
    assert (repeated["proposals_written"], repeated["proposals_already_labelled"]) == (0, len(entities))
    [first, second] = [r.asset_materializations_for_node("receipt_predictions")[0] for r in (result, again)]
    assert first.tags["dagster/data_version"] == second.tags["dagster/data_version"], "same model, same words"


def test_since_last_run_reads_the_receipts_added_after_the_previous_read_and_proposals_can_be_off(deployment):
    settings, table, _, _ = deployment
    instance = dg.DagsterInstance.ephemeral()
    first = _metadata(_run(settings, instance, scope="since_last_run", write_proposals=False), "receipt_predictions")
    assert first["receipts"] == 2 and first["since"] == "", "the first run reads every receipt"
    assert first["proposals_written"] == 0

    put_items(table, receipt_items(LATE, added=dt.datetime.now(dt.UTC).isoformat()))
    later = _metadata(_run(settings, instance, scope="since_last_run", write_proposals=False), "receipt_predictions")
    assert later["since"] == first["read_started_at"] and later["receipts"] == 1
    document = json.loads(
        storage.read_bytes(storage.join(settings.artifact_root, "assets", "receipt_predictions.json"))
    )
    assert set(pd.read_parquet(document["words_table"])["image_id"]) == {LATE}
    assert document["proposals"]["enabled"] is False
    assert not any(_item(table, (LATE, 1, 1, 1), label) for label in dynamo_schema.LABEL_VOCABULARY)

    # a receipt added just before a read is read again by the next (the index may not have had it yet)
    overlap = _metadata(_run(settings, instance, scope="since_last_run", write_proposals=False), "receipt_predictions")
    assert overlap["receipts"] == 1
    put_items(table, [receipt_items(LATE, added=OLD)[0]])
    nothing = _metadata(_run(settings, instance, scope="since_last_run"), "receipt_predictions")
    assert (nothing["receipts"], nothing["words"], nothing["proposals_written"]) == (0, 0, 0)


def test_the_asset_is_downstream_of_the_production_model_and_proposals_are_off_in_prod():
    defs = build_definitions(DeploymentSettings.from_env({}))
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("receipt_predictions"))
    assert node.group_name == "inference" and node.code_version
    assert {key.to_user_string() for key in node.parent_keys} == {"production_model", "receipts_table"}
    prod = {"RECEIPT_PIPELINE_DEPLOYMENT": "prod", "RECEIPTS_TABLE": "t", "RECEIPT_PIPELINE_BUCKET": "b"}
    assert DeploymentSettings.from_env(prod).write_proposals is False
    assert DeploymentSettings.from_env({**prod, "RECEIPT_PIPELINE_WRITE_PROPOSALS": "true"}).write_proposals
    assert DeploymentSettings.from_env({}).write_proposals is True
    assert DeploymentSettings.from_env({"RECEIPT_PIPELINE_WRITE_PROPOSALS": "false"}).write_proposals is False
