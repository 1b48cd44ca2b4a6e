"""Either source alone trains: SROIE without a table or an emulator, the table without a SROIE folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from receipt_pipeline.core import bio
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata
from receipt_pipeline_tests.training_data import QUICK_SPLIT, sroie_subset

REPO_ROOT = Path(__file__).resolve().parents[2]
DOWNSTREAM = ["bio_receipt_split", "windowed_tensors", "layoutlm_checkpoint", "evaluation_report"]
SHORT_TRAINING = {"max_steps": 4, "eval_steps": 2}


def _run_config(sources: list[str]) -> dict:
    return {
        "ops": {
            "bio_receipt_split": {"config": {**QUICK_SPLIT["bio_receipt_split"]["config"], "sources": sources}},
            "layoutlm_checkpoint": {"config": SHORT_TRAINING},
        }
    }


def test_sroie_alone_trains_and_is_scored_with_no_table_and_no_emulator(shared_sroie_dir, tmp_path):
    sroie = sroie_subset(shared_sroie_dir, tmp_path / "sroie", receipts=40)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "RECEIPT", "SROIE", "DAGSTER"))
    }
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"),
        RECEIPT_PIPELINE_DATA_DIR=str(tmp_path / "data"),
        SROIE_DIR=str(sroie),
        HF_HUB_OFFLINE="1",
    )
    (tmp_path / "home").mkdir()
    assert "AWS_ENDPOINT_URL" not in env and "RECEIPTS_TABLE" not in env

    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "receipt_pipeline.definitions",
         "--select", ",".join(["sroie_receipts", *DOWNSTREAM]), "--config-json", json.dumps(_run_config(["sroie"]))],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-4000:]
    assets = tmp_path / "data" / "assets"
    assert not (assets / "raw_receipt_words.parquet").exists(), "the table was never read"
    report = json.loads((assets / "evaluation_report.json").read_text())
    # scored field by field against the entity strings that came with the receipts, through the split
    assert report["fields"]["receipts"] == report["receipts"] > 0 and report["field_f1"] is not None
    assert set(report["checkpoint"]["source_snapshots"]) == set()


def test_the_table_alone_trains_and_is_scored_without_a_sroie_folder(aws_emulator, tmp_path, monkeypatch):
    monkeypatch.delenv("SROIE_DIR", raising=False)
    with seeded_receipts_table(receipts=40, seed=5) as table:
        settings = _local_settings(tmp_path, table)
        assert settings.sroie_dir is None
        definitions = build_definitions(settings)
        result = dg.materialize(
            [*definitions.assets],
            selection=["raw_receipt_words", *DOWNSTREAM],
            resources=resources_for(settings),
            run_config=_run_config(["dynamo"]),
            instance=dg.DagsterInstance.ephemeral(),
        )

    assert result.success
    split = build_definitions(settings).load_asset_value("bio_receipt_split")
    assert set(split.column("source").to_pylist()) == {"dynamo"}
    assert bio.reference_fields(split) == {}, "the table states no reference fields"
    report = _metadata(result, "evaluation_report")
    assert "field_f1" not in report and 0.0 <= report["entity_f1"] <= 1.0
