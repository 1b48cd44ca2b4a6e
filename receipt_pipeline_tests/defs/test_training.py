"""The six assets through Dagster: a short training run, the report, lineage, and the prod S3 layout."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from receipt_pipeline.core import storage
from receipt_pipeline.core.dynamo_reader import label_snapshot
from receipt_pipeline.core.dynamo_schema import LABEL_VOCABULARY
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.core.training import weights_digest
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import evaluation, ingestion, promotion, training, training_data
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata
from receipt_pipeline_tests.training_data import QUICK_SPLIT, sroie_subset

SIX = [
    ingestion.raw_receipt_words,
    ingestion.sroie_receipts,
    training_data.bio_receipt_split,
    training_data.windowed_tensors,
    training.layoutlm_checkpoint,
    evaluation.evaluation_report,
]
WITH_PROMOTION = [*SIX, promotion.production_model, evaluation.f1_not_below_production]
TRAINING_CONFIG = {"max_steps": 6, "eval_steps": 3, "per_device_batch_size": 4, "gradient_accumulation_steps": 1}
SHORT_TRAINING = {"ops": {**QUICK_SPLIT, "layoutlm_checkpoint": {"config": TRAINING_CONFIG}}}


@pytest.fixture(scope="module")
def seeded_table(aws_emulator):
    with seeded_receipts_table(receipts=30, seed=9) as name:
        yield name


@pytest.fixture(scope="module")
def sroie_dir(shared_sroie_dir, module_tmp):
    return sroie_subset(shared_sroie_dir, module_tmp("sroie"), receipts=80)


@pytest.fixture(scope="module")
def local_run(seeded_table, sroie_dir, module_tmp):
    settings = _local_settings(module_tmp("local"), seeded_table, sroie_dir=str(sroie_dir))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        WITH_PROMOTION, resources=resources_for(settings), instance=instance, run_config=SHORT_TRAINING
    )
    return result, settings, instance


def test_the_six_assets_materialise_and_the_checkpoint_names_its_inputs(local_run):
    result, settings, _ = local_run
    assert result.success
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    assert checkpoint["steps"] == 6 and checkpoint["device"] == "cpu"
    assert checkpoint["first_loss"] > checkpoint["last_loss"]
    assert 0.0 <= checkpoint["best_validation_f1"] <= 1.0
    assert checkpoint["real_tokens_per_second"] > 0 and checkpoint["peak_memory_mib"] > 0
    assert checkpoint["hyperparameters"]["learning_rate"] == 2e-4  # the compact default
    assert [e["step"] for e in checkpoint["evaluations"]] == [3, 6]
    split = _metadata(result, "bio_receipt_split")
    windows = _metadata(result, "windowed_tensors")
    assert checkpoint["bio_receipt_split_version"] == split["content_hash"]
    [windows_event] = result.asset_materializations_for_node("windowed_tensors")
    assert checkpoint["windowed_tensors_version"] == windows_event.tags["dagster/data_version"]
    best = checkpoint["path"]
    assert best.endswith("/best") and storage.exists(storage.join(best, "model.safetensors"))
    assert windows["windows"] > 0

    graph = build_definitions(settings).resolve_asset_graph()
    parents = {key.to_user_string() for key in graph.get(dg.AssetKey("evaluation_report")).parent_keys}
    assert {"layoutlm_checkpoint", "windowed_tensors"} <= parents, "the report's lineage names the model it scored"


def test_every_asset_has_a_code_version_and_each_materialisation_a_data_version(local_run):
    result, settings, _ = local_run
    graph = build_definitions(settings).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key.to_user_string()} has no code version"
    materialised = {event.asset_key.to_user_string(): event for event in result.get_asset_materialization_events()}
    assert set(materialised) == {asset.key.to_user_string() for asset in WITH_PROMOTION[:-1]}
    for name, event in materialised.items():
        tags = event.materialization.tags or {}
        assert tags.get("dagster/data_version_is_user_provided") == "true", f"{name}: no data version of its own"
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    versions = {name: event.materialization.tags["dagster/data_version"] for name, event in materialised.items()}
    assert versions["layoutlm_checkpoint"] == checkpoint["weights_sha256"] == weights_digest(checkpoint["path"])
    assert versions["production_model"] == versions["layoutlm_checkpoint"], "production is that checkpoint"


def test_the_checkpoint_records_the_table_snapshot_and_the_report_names_the_checkpoint(local_run, seeded_table):
    result, _, _ = local_run
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    table = label_snapshot(seeded_table)
    assert checkpoint["table"] == seeded_table
    assert checkpoint["table_valid_labels"] == table.labels > 0
    assert checkpoint["table_newest_valid_label"] == table.newest_timestamp
    assert checkpoint["table_valid_labels_per_label"] == table.per_label
    # named by label, read from the keys (the users' writer sets no `label` attribute)
    assert set(table.per_label) <= set(LABEL_VOCABULARY) and len(table.per_label) > 5
    report = _metadata(result, "evaluation_report")
    assert report["checkpoint_version"] == checkpoint["weights_sha256"]
    assert report["checkpoint_run"] == checkpoint["run"] and report["checkpoint"] == checkpoint["path"]
    document = json.loads(storage.read_bytes(storage.join(report["report_folder"], "report.json")))
    assert document["checkpoint"]["version"] == checkpoint["weights_sha256"]
    assert document["checkpoint"]["source_snapshots"]["dynamo"]["labels"] == table.labels


def test_the_first_model_is_promoted_with_links_to_its_run_data_and_report(local_run):
    result, settings, instance = local_run
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == evaluation.CHECK_F1]
    assert check.passed
    production = _metadata(result, "production_model")
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    root = storage.join(settings.artifact_root, "models", "production")
    assert production["path"] == root
    assert weights_digest(root) == checkpoint["weights_sha256"], "the production folder holds the checkpoint's weights"
    [checkpoint_event] = result.asset_materializations_for_node("layoutlm_checkpoint")
    training_run = instance.get_run_by_id(production["training_run"])
    assert training_run is not None and training_run.run_id == result.run_id
    assert storage.exists(production["report"])
    assert production["entity_f1"] == _metadata(result, "evaluation_report")["entity_f1"]
    assert production["windowed_tensors_version"] == checkpoint["windowed_tensors_version"]
    assert production["table_valid_labels"] == checkpoint["table_valid_labels"]
    manifest = json.loads(storage.read_bytes(storage.join(root, "production.json")))
    assert manifest["checkpoint"]["version"] == checkpoint["weights_sha256"]
    assert manifest["checkpoint"]["path"] == checkpoint["path"]
    assert "model.safetensors" in manifest["files"] and "label_map.json" in manifest["files"]
    assert checkpoint_event.tags["dagster/data_version"] == checkpoint["weights_sha256"]


def test_the_gate_scores_production_on_the_same_receipts_and_refuses_a_label_change(local_run):
    _, settings, instance = local_run
    root = storage.join(settings.artifact_root, "models", "production")
    manifest_uri, label_map_uri = storage.join(root, "production.json"), storage.join(root, "label_map.json")
    promoted, label_map = storage.read_bytes(manifest_uri), storage.read_bytes(label_map_uri)

    def gate():
        result = dg.materialize(
            WITH_PROMOTION,
            resources=resources_for(settings),
            instance=instance,
            selection=["evaluation_report", "production_model"],
            raise_on_error=False,
        )
        [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == evaluation.CHECK_F1]
        return check, result.asset_materializations_for_node("production_model"), _metadata(result, "evaluation_report")

    try:
        # production as if it had scored far above this model on other receipts: the old gate refused on that
        manifest = json.loads(promoted)
        manifest["scores"]["entity_f1"] = 1.0
        storage.write_bytes(manifest_uri, json.dumps(manifest).encode())
        check, promoted_events, report = gate()
        # the same model on the same receipts: no difference, whatever it recorded
        assert check.passed, check.description
        assert check.metadata["difference"].value == 0.0
        assert check.metadata["interval_95_low"].value == check.metadata["interval_95_high"].value == 0.0
        assert check.metadata["receipts_compared"].value == report["receipts"]
        assert check.metadata["candidate_f1"].value == check.metadata["production_f1"].value
        assert check.metadata["candidate_f1"].value == pytest.approx(report["entity_f1"])
        deltas = check.metadata["label_deltas"].value
        assert set(deltas) == set(check.metadata["labels_compared"].value) and deltas
        assert all(delta["delta"] == 0.0 and delta["support"] >= 0 for delta in deltas.values())
        assert report["production_f1_on_these_receipts"] == report["entity_f1"]
        # the figures beside entity F1, for both models: the same model gives the same figures
        for name in evaluation.GATE_FIGURES:
            candidate, production = (check.metadata[f"{who}_{name}"].value for who in ("candidate", "production"))
            assert candidate == pytest.approx(production), name
            assert candidate == pytest.approx(report[name]), name
        assert report["comparable_with_production_report"] is True, report["comparability"]
        assert len(promoted_events) == 1

        # a production model that knows another label
        changed = json.loads(label_map)
        changed["labels"] = [*changed["labels"], "EXTRA_LABEL"]
        storage.write_bytes(label_map_uri, json.dumps(changed).encode())
        check, promoted_events, _ = gate()
        assert not check.passed and "allow_label_change" in check.description and "EXTRA_LABEL" in check.description
        assert not promoted_events, "the production model was left alone"
    finally:
        storage.write_bytes(manifest_uri, promoted)
        storage.write_bytes(label_map_uri, label_map)


def test_the_gate_refuses_a_report_that_scored_another_production_model(local_run):
    _, settings, _ = local_run
    production = json.loads(
        storage.read_bytes(storage.join(settings.artifact_root, "models", "production", "production.json"))
    )
    report = {"entity_f1": 0.9, "receipts": 7, "champion": {"version": "an-older-production-model"}}
    decision = promotion.promotion_decision(resources_for(settings)["settings"], report)
    assert not decision.passed and decision.production_f1 is None and decision.receipts == 7
    assert "'an-older-production-model'" in decision.reason
    assert repr(production["checkpoint"]["version"]) in decision.reason


def test_production_model_refuses_a_report_of_another_checkpoint(local_run):
    _, settings, _ = local_run
    report = {"checkpoint": {"version": "something-else"}, "entity_f1": 1.0, "report_folder": "/nowhere"}
    context = dg.build_asset_context(resources={"settings": resources_for(settings)["settings"]})
    with pytest.raises(dg.Failure, match="scored checkpoint 'something-else'"):
        promotion.production_model(
            context, layoutlm_checkpoint={"version": "v1", "path": "/x"}, evaluation_report=report
        )


def test_the_report_has_entity_and_field_scores_a_markdown_a_json_and_a_png(local_run):
    result, settings, _ = local_run
    report = _metadata(result, "evaluation_report")
    for name in ("entity_f1", "entity_precision", "entity_recall", "field_f1", "field_precision", "field_recall"):
        assert isinstance(report[name], float) and 0.0 <= report[name] <= 1.0
    assert "entity_f1_change" not in report, "no earlier materialisation to compare with"
    assert "strict IOB2" in report["report"] and "SROIE field-level" in report["report"]
    folder = report["report_folder"]
    document = json.loads(storage.read_bytes(storage.join(folder, "report.json")))
    assert document["entity_f1"] == report["entity_f1"] and document["fields"]["receipts"] > 0
    assert storage.read_bytes(storage.join(folder, "confusion.png"))[:4] == b"\x89PNG"
    assert report["checkpoint"] == _metadata(result, "layoutlm_checkpoint")["path"]
    # the pictures are inside the Markdown the UI shows, not only paths
    assert report["report"].count("](data:image/png;base64,") == 2


def test_the_report_has_slices_a_per_receipt_table_token_errors_and_a_review_queue(local_run):
    import pandas as pd

    result, _, _ = local_run
    report = _metadata(result, "evaluation_report")
    slices = report["slices"]
    assert {"source: dynamo", "source: sroie"} <= set(slices)
    dated = sum(v["receipts"] for k, v in slices.items() if k.startswith("added: "))
    assert dated == slices["source: dynamo"]["receipts"], "every table receipt is recent or older, SROIE's neither"
    assert sum(v["receipts"] for k, v in slices.items() if k.startswith("source: ")) == report["receipts"]
    assert sum(v["receipts"] for k, v in slices.items() if k.startswith("merchant: ")) == report["receipts"]
    receipts = pd.read_parquet(report["receipts_table"])
    assert len(receipts) == report["receipts"] and receipts["key"].is_unique
    assert pd.read_csv(report["receipts_csv"])["key"].tolist() == receipts["key"].tolist()
    assert {"entity_f1", "word_errors", "merchant_seen_in_train", "total_predicted", "total_expected"} <= set(receipts)
    errors = [json.loads(line) for line in storage.read_bytes(report["token_errors"]).decode().splitlines()]
    assert len(errors) == receipts["word_errors"].sum()
    assert all(e["true"] != e["predicted"] and 0 <= e["confidence"] <= 1 for e in errors)
    queue = pd.read_csv(report["review_queue"])
    assert (queue["predicted"] != "O").all() and queue["confidence"].is_monotonic_decreasing
    # the slices' F1 is the receipts' counts summed
    dynamo = receipts[receipts["source"] == "dynamo"]
    correct, found, true = dynamo[["entities_correct", "entities_predicted", "entities_true"]].sum()
    assert slices["source: dynamo"]["f1"] == pytest.approx(2 * correct / (found + true) if found + true else 0.0)


def test_the_report_scores_the_tables_fields_and_line_items_the_product_details_and_the_training_gap(local_run):
    import pandas as pd

    result, _, _ = local_run
    report = _metadata(result, "evaluation_report")
    document = json.loads(storage.read_bytes(storage.join(report["report_folder"], "report.json")))
    table = document["table"]
    # the table's receipts, scored as SROIE's are: each field's exact match, against their VALID labels' reading
    assert table["receipts"] == report["slices"]["source: dynamo"]["receipts"] > 0
    assert {"merchant", "date", "time", "total", "subtotal", "tax"} <= set(table["fields"]["per_field"])
    assert table["fields"]["date_order"] == "MDY"
    assert report["table_field_f1"] == table["fields"]["overall"]["f1"] == report["table_fields"]["overall"]["f1"]
    items = table["line_items"]
    assert items["support"] > 0 and report["line_item_f1"] == items["f1"]
    assert set(items["items_not_adding_up"]) == {"reference", "predicted"}
    receipts = pd.read_parquet(report["receipts_table"])
    dynamo = receipts[receipts["source"] == "dynamo"]
    assert dynamo["items_expected"].sum() == items["support"] and dynamo["items_correct"].sum() == items["correct"]
    # the product-detail labels with their precision and recall, and their macro F1
    details = report["product_details"]
    # the labels the test receipts carry or the model predicts: a receipt that prints no unit price has none
    assert {"PRODUCT_NAME", "LINE_TOTAL"} <= set(details["labels"]) <= {"PRODUCT_NAME", "QUANTITY", "UNIT_PRICE",
                                                                         "LINE_TOTAL"}  # fmt: skip
    assert all({"precision", "recall", "f1", "support"} <= set(v) for v in details["labels"].values())
    f1s = [v["f1"] for v in details["labels"].values()]
    assert details["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    assert report["product_detail_macro_f1"] == details["macro_f1"]
    # the model on as many of its own training receipts as it was scored on here
    sample = report["train_sample"]
    assert sample["receipts"] == report["receipts"] and sample["test_entity_f1"] == report["entity_f1"]
    assert report["train_test_entity_f1_gap"] == pytest.approx(sample["entity_f1"] - report["entity_f1"])
    # in the seen and unseen slices too, over their table receipts
    merchant_slices = {k: v for k, v in report["slices"].items() if k.startswith("merchant: ") and "field_f1" in v}
    assert merchant_slices and sum(v["table_receipts"] for v in merchant_slices.values()) == table["receipts"]
    for needle in ("The table's fields", "Line items", "Product details", "of its own training receipts"):
        assert needle in report["report"]


def test_a_second_report_on_the_same_checkpoint_shows_no_f1_change(local_run):
    _, settings, instance = local_run
    again = dg.materialize(SIX, resources=resources_for(settings), instance=instance, selection=["evaluation_report"])
    assert _metadata(again, "evaluation_report")["entity_f1_change"] == 0.0


def test_prod_trains_in_two_torchrun_processes_into_s3_and_scores_from_there(
    seeded_table, sroie_dir, artifacts_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("RECEIPT_PIPELINE_SCRATCH", str(tmp_path / "scratch"))
    settings = DeploymentSettings.from_env(
        {
            "RECEIPT_PIPELINE_DEPLOYMENT": "prod",
            "RECEIPTS_TABLE": seeded_table,
            "RECEIPT_PIPELINE_BUCKET": artifacts_bucket,
            "SROIE_DIR": str(sroie_dir),
            "RECEIPT_PIPELINE_BASE_MODEL": "compact",
        }
    )
    # two CPU processes stand for an instance with two GPUs: the checkpoints sync from the first process
    two_processes = {"ops": {**QUICK_SPLIT, "layoutlm_checkpoint": {"config": {**TRAINING_CONFIG, "processes": 2}}}}
    result = dg.materialize(
        SIX, resources=resources_for(settings), instance=dg.DagsterInstance.ephemeral(), run_config=two_processes
    )
    assert result.success
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    assert checkpoint["processes"] == 2 and checkpoint["steps"] == 6
    run = checkpoint["run"]
    assert checkpoint["path"] == f"s3://{artifacts_bucket}/runs/{run}/best"
    assert storage.exists(f"s3://{artifacts_bucket}/runs/{run}/best/COMPLETE")
    assert storage.exists(f"s3://{artifacts_bucket}/runs/{run}/checkpoint-6/COMPLETE")
    report = _metadata(result, "evaluation_report")
    assert report["report_folder"].startswith(f"s3://{artifacts_bucket}/reports/")
    assert 0.0 <= report["entity_f1"] <= 1.0
