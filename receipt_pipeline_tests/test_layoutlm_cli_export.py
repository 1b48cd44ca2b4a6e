"""`layoutlm-cli export-onnx` and `export-coreml` on a tiny random model: what they write and say."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from receipt_pipeline.core import export
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER
from receipt_pipeline.layoutlm_cli import main
from receipt_pipeline_tests.export_fixtures import all_test_windows, tiny_classifier


@pytest.fixture(scope="module")
def model(module_tmp):
    root = module_tmp("cli-export")
    manifest = all_test_windows(root, receipts=6)
    return tiny_classifier(manifest, root / "model"), root / "windows_manifest.json", root


def test_export_onnx_writes_both_graphs_checked_on_the_windows(model):
    model_dir, manifest, root = model
    out = root / "onnx-out"
    args = ["export-onnx", "--checkpoint-dir", str(model_dir), "--output-dir", str(out), "--quantize", "int8"]
    result = CliRunner().invoke(main, [*args, "--windows", str(manifest)])
    assert result.exit_code == 0, result.output
    assert (
        f"float32: {out / export.ONNX_FILE}" in result.output
        and f"int8: {out / export.ONNX_INT8_FILE}" in result.output
    )
    assert "float32: argmax = PyTorch's on 100.0000%" in result.output and "fused: Attention 2" in result.output
    document = json.loads((out / export.MANIFEST).read_text())
    assert document["parity"]["float32"]["passed"] and (out / COMPLETE_MARKER).is_file()


def test_export_coreml_int8_reports_its_spec_and_why_predictions_were_not_compared(model):
    pytest.importorskip("coremltools", reason="Core ML export needs the [coreml] extra")
    model_dir, _, root = model
    out = root / "coreml-out"
    args = ["export-coreml", "--checkpoint-dir", str(model_dir), "--output-dir", str(out), "--quantize", "int8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"{out / export.COREML_PACKAGE} (" in result.output and "int8)" in result.output
    assert "input_ids: int32 1..64 x 1..512" in result.output and "logits: float16 any shape" in result.output
    assert "float16 operations fed an infinite constant: 0" in result.output
    document = json.loads((out / export.MANIFEST).read_text())
    assert document["quantize"] == "int8" and document["spec"]["operations"]["constexpr_affine_dequantize"] > 0


def test_export_needs_exactly_one_model_source(model):
    model_dir, _, root = model
    both = ["--checkpoint-dir", str(model_dir), "--s3-uri", "s3://bucket/models/production"]
    for args in ([], both):
        result = CliRunner().invoke(main, ["export-onnx", *args, "--output-dir", str(root / "never")])
        assert result.exit_code != 0 and "give one of --checkpoint-dir and --s3-uri" in result.output
    assert not (root / "never").exists()
