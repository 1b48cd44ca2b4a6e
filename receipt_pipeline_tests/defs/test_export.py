"""exported_model through Dagster: a promoted tiny model exported under models/exported/<version>, checked on
the test windows, its metadata naming what each export costs; downstream of production_model."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from receipt_pipeline.core import export, promotion
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.core.training import weights_digest
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import export as export_defs
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.export_fixtures import all_test_windows, tiny_classifier


@pytest.fixture(scope="module")
def materialised(module_tmp):
    root = module_tmp("exported-model")
    settings = DeploymentSettings.from_env({"RECEIPT_PIPELINE_DATA_DIR": str(root / "data")})
    manifest = all_test_windows(root)
    model_dir = tiny_classifier(manifest, root / "best")
    version = weights_digest(model_dir)
    production = promotion.production_root(settings.artifact_root)
    promoted = promotion.promote(str(model_dir), production, {"checkpoint": {"version": version}})

    @dg.asset(name="production_model")
    def production_model() -> dict:
        return {**promoted, "path": production}

    @dg.asset(name="windowed_tensors")
    def windowed_tensors() -> dict:
        return manifest

    exported_root = export.exported_root(settings.artifact_root)
    stale = Path(exported_root) / "an-older-version"
    stale.mkdir(parents=True)
    result = dg.materialize(
        [production_model, windowed_tensors, export_defs.exported_model],
        resources=resources_for(settings),
        instance=dg.DagsterInstance.ephemeral(),
        # Core ML's conversion is tested in core/test_export.py; here its absence must be said, and cost nothing
        run_config={"ops": {"exported_model": {"config": {"coreml": False}}}},
    )
    return result, version, exported_root, stale


def test_the_production_model_is_exported_checked_and_described(materialised):
    result, version, exported_root, stale = materialised
    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["exported_model"])
    metadata = {name: getattr(value, "value", value) for name, value in event.materialization.metadata.items()}
    assert event.materialization.tags["dagster/data_version"] == metadata["model_version"] == version
    assert metadata["onnx_argmax_agreement"] >= export.MIN_ARGMAX_AGREEMENT
    assert abs(metadata["onnx_entity_f1"] - metadata["pytorch_entity_f1"]) <= export.MAX_ENTITY_F1_DIFFERENCE
    assert 0 < metadata["onnx_int8_mib"] < metadata["onnx_mib"] / 3 and "onnx_int8_entity_f1_change" in metadata
    assert (metadata["coreml"], metadata["coreml_skipped_because"]) == ("skipped", "not asked for")

    folder = Path(exported_root) / version
    assert metadata["path"] == str(folder) and not stale.exists(), "only the production model's export stays"
    for part in (folder, folder / "onnx"):
        assert (part / COMPLETE_MARKER).is_file() and (part / export.MANIFEST).is_file()
    document = json.loads((folder / export.MANIFEST).read_text())
    assert document["version"] == version and document["onnx"]["parity"]["float32"]["passed"]
    assert (folder / "onnx" / export.ONNX_INT8_FILE).is_file() and not (folder / "coreml").exists()


def test_the_asset_is_in_the_inference_group_downstream_of_production():
    graph = build_definitions(DeploymentSettings.from_env({})).resolve_asset_graph()
    node = graph.get(dg.AssetKey("exported_model"))
    assert node.group_name == "inference" and node.code_version
    assert {key.to_user_string() for key in node.parent_keys} == {"production_model", "windowed_tensors"}
