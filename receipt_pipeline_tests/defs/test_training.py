"""The six assets through Dagster: a short training run, the report, lineage, and the prod S3 layout."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from receipt_pipeline.core import storage
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import ingestion, training, training_data
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata
from receipt_pipeline_tests.training_data import sroie_subset

SIX = [
    ingestion.raw_receipt_words,
    ingestion.sroie_receipts,
    training_data.bio_receipt_split,
    training_data.windowed_tensors,
    training.layoutlm_checkpoint,
    training.evaluation_report,
]
SHORT_TRAINING = {
    "ops": {
        "layoutlm_checkpoint": {
            "config": {"max_steps": 6, "eval_steps": 3, "per_device_batch_size": 4, "gradient_accumulation_steps": 1}
        }
    }
}


@pytest.fixture(scope="module")
def seeded_table(aws_emulator):
    with seeded_receipts_table(receipts=30, seed=9) as name:
        yield name


@pytest.fixture(scope="module")
def sroie_dir(shared_sroie_dir, tmp_path_factory):
    return sroie_subset(shared_sroie_dir, tmp_path_factory.mktemp("sroie"), receipts=80)


@pytest.fixture(scope="module")
def local_run(seeded_table, sroie_dir, tmp_path_factory):
    settings = _local_settings(tmp_path_factory.mktemp("local"), seeded_table, sroie_dir=str(sroie_dir))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(SIX, resources=resources_for(settings), instance=instance, run_config=SHORT_TRAINING)
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


def test_a_second_report_on_the_same_checkpoint_shows_no_f1_change(local_run):
    _, settings, instance = local_run
    again = dg.materialize(SIX, resources=resources_for(settings), instance=instance, selection=["evaluation_report"])
    assert _metadata(again, "evaluation_report")["entity_f1_change"] == 0.0


def test_prod_trains_into_s3_and_scores_from_there(seeded_table, sroie_dir, artifacts_bucket, tmp_path, monkeypatch):
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
    result = dg.materialize(
        SIX, resources=resources_for(settings), instance=dg.DagsterInstance.ephemeral(), run_config=SHORT_TRAINING
    )
    assert result.success
    checkpoint = _metadata(result, "layoutlm_checkpoint")
    run = checkpoint["run"]
    assert checkpoint["path"] == f"s3://{artifacts_bucket}/runs/{run}/best"
    assert storage.exists(f"s3://{artifacts_bucket}/runs/{run}/best/COMPLETE")
    assert storage.exists(f"s3://{artifacts_bucket}/runs/{run}/checkpoint-6/COMPLETE")
    report = _metadata(result, "evaluation_report")
    assert report["report_folder"].startswith(f"s3://{artifacts_bucket}/reports/")
    assert 0.0 <= report["entity_f1"] <= 1.0
