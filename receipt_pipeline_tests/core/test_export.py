"""ONNX and Core ML exports of a tiny random LayoutLM: dynamic axes, parity with PyTorch on windows, the Core ML
spec, no infinite constant in the float16 graph, and no half-written export ever accepted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from receipt_pipeline.core import export
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER
from receipt_pipeline.core.windows import WindowSet
from receipt_pipeline_tests.export_fixtures import all_test_windows, tiny_classifier

PAD = 0  # the compact tokenizer's


@pytest.fixture(scope="module")
def model(module_tmp) -> tuple[Path, dict]:
    root = module_tmp("export")
    manifest = all_test_windows(root)
    return tiny_classifier(manifest, root / "model"), manifest


@pytest.fixture(scope="module")
def onnx_export(model, module_tmp) -> tuple[Path, dict]:
    model_dir, manifest = model
    out = module_tmp("onnx") / "onnx"
    document = export.export_onnx(model_dir, out, windows=WindowSet(manifest, "test"), pad_token_id=PAD)
    return out, document


@pytest.fixture(scope="module")
def coreml_export(model, module_tmp) -> tuple[Path, dict]:
    pytest.importorskip("coremltools", reason="Core ML export needs the [coreml] extra")
    model_dir, manifest = model
    out = module_tmp("coreml") / "coreml"
    document = export.export_coreml(model_dir, out, windows=WindowSet(manifest, "test"), pad_token_id=PAD)
    return out, document


def _inputs(batch: int, length: int, padded_from: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    corner = rng.integers(0, 900, (batch, length, 2))
    mask = np.ones((batch, length), dtype=np.int64)
    mask[-1, padded_from:] = 0
    return {
        "input_ids": rng.integers(1000, 5000, (batch, length)).astype(np.int64),
        "bbox": np.concatenate([corner, corner + 50], axis=-1).astype(np.int64),
        "attention_mask": mask,
    }


def test_onnx_axes_are_dynamic_and_logits_match_pytorch(model, onnx_export):
    import torch

    from receipt_pipeline.core.evaluation import load_classifier

    folder, document = onnx_export
    session = export.onnx_session(folder / export.ONNX_FILE)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == {"input_ids": ["batch", "sequence"], "bbox": ["batch", "sequence", 4],
                      "attention_mask": ["batch", "sequence"]}  # fmt: skip
    classifier = load_classifier(str(model[0])).eval()
    for batch, length in ((1, 7), (3, 300)):  # neither is the 2 x 16 it was traced with
        feed = _inputs(batch, length, padded_from=length // 2)
        with torch.inference_mode():
            expected = classifier(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        got = session.run(["logits"], feed)[0]
        real = feed["attention_mask"] == 1
        assert got.shape == expected.shape and np.abs(got - expected)[real].max() < 1e-4
    # the transformer optimizer fused every layer's attention, so the graph is ORT's fast path
    assert document["fused_operators"]["Attention"] == 2 and document["mask_unsqueeze_split"]


def test_onnx_export_is_checked_on_windows_and_int8_reported(model, onnx_export):
    folder, document = onnx_export
    fp32, int8 = document["parity"]["float32"], document["parity"]["int8"]
    assert fp32["passed"] and fp32["tokens"] > 1000 and fp32["receipts"] >= 10
    assert fp32["argmax_agreement"] >= export.MIN_ARGMAX_AGREEMENT
    assert abs(fp32["entity_f1"] - fp32["reference_entity_f1"]) <= export.MAX_ENTITY_F1_DIFFERENCE
    # int8 is reported, not held to the float32 bars: its F1 change and its size are what it costs
    assert "passed" not in int8 and {"entity_f1_change", "argmax_agreement", "bytes"} <= set(int8)
    assert fp32["bytes"] == document["files"]["float32"]["bytes"] and int8["bytes"] < fp32["bytes"] / 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [COMPLETE_MARKER, export.MANIFEST, export.ONNX_FILE, export.ONNX_INT8_FILE, *document["sidecars"]]
    )
    assert json.loads((folder / export.MANIFEST).read_text()) == document
    assert {"tokenizer.json", "label_map.json", "config.json"} <= set(document["sidecars"])


def test_the_int8_graph_scales_each_weight_per_output_channel(onnx_export):
    import onnx

    folder, document = onnx_export
    assert document["int8_quantization"] == {"method": "dynamic", "weights": "int8", "per_channel": True}
    graph = onnx.load(str(folder / export.ONNX_INT8_FILE)).graph
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    quantized = [node for node in graph.node if node.op_type in ("MatMulInteger", "QAttention")]
    assert len(quantized) >= 2 * document["fused_operators"]["Attention"], "every layer's weights are int8"
    for node in quantized:
        [weight] = [shapes[name] for name in node.input if len(shapes.get(name, [])) == 2]
        # a zero point (MatMulInteger) or a scale (QAttention) per output column, not one for the whole matrix
        assert any(shapes.get(name) == [weight[1]] for name in node.input), (node.name, weight)


def test_a_failed_export_leaves_the_previous_one_and_nothing_half_written(model, module_tmp, monkeypatch):
    model_dir, manifest = model
    root = module_tmp("crash")
    target = root / "onnx"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"the previous export")
    (target / COMPLETE_MARKER).write_text("{}")
    # a parity check that cannot pass: the export fails after every graph file is written
    monkeypatch.setattr(export, "MIN_ARGMAX_AGREEMENT", 1.01)
    with pytest.raises(export.ParityError, match="not published"):
        export.export_onnx(model_dir, target, quantize_int8=False, windows=WindowSet(manifest, "test"), pad_token_id=0)
    assert (target / "model.onnx").read_bytes() == b"the previous export"
    assert sorted(p.name for p in root.iterdir()) == ["onnx"]  # no staging folder left behind

    with pytest.raises(RuntimeError, match="cut short"), export.staged_folder(root / "new") as staging:
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("cut short")
    assert not (root / "new").exists() and sorted(p.name for p in root.iterdir()) == ["onnx"]

    (root / "unmarked").mkdir()
    (root / "unmarked" / "model.onnx").write_bytes(b"half")
    with pytest.raises(export.ExportError, match="no COMPLETE marker"):
        export.onnx_session(root / "unmarked" / "model.onnx")


def test_coreml_spec_has_ranged_int32_inputs_and_float16_compute(coreml_export):
    folder, document = coreml_export
    spec = export.coreml_spec_summary(folder / export.COREML_PACKAGE)
    assert spec == document["spec"] and spec["model_type"] == "mlProgram"
    inputs = {feature["name"]: feature for feature in spec["inputs"]}
    assert set(inputs) == set(export.INPUTS) and {f["dtype"] for f in inputs.values()} == {"int32"}
    assert inputs["input_ids"]["ranges"] == [[1, export.COREML_MAX_BATCH], [1, 512]]
    assert inputs["bbox"]["ranges"] == [[1, export.COREML_MAX_BATCH], [1, 512], [4, 4]]
    assert [(f["name"], f["dtype"]) for f in spec["outputs"]] == [("logits", "float16")]
    assert spec["operations_by_output_dtype"]["float32"] == 0 and spec["operations"]["softmax"] == 2
    assert (folder / COMPLETE_MARKER).is_file() and json.loads((folder / export.MANIFEST).read_text()) == document


def test_coreml_graph_feeds_no_infinite_constant_where_the_stock_mask_would(model, coreml_export):
    import torch

    from receipt_pipeline.core.evaluation import load_classifier

    folder, document = coreml_export
    assert export.infinite_constants_feeding_fp16_ops(folder / export.COREML_PACKAGE) == []
    assert document["infinite_constants_feeding_fp16_ops"] == []

    class Stock(torch.nn.Module):
        """LayoutLM as it ships: its mask is (1 - mask) * finfo(float32).min."""

        def __init__(self, classifier) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, bbox, attention_mask):
            return self.classifier(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask).logits

    classifier = load_classifier(str(model[0])).eval()
    classifier.config._attn_implementation = "eager"
    found = export.infinite_constants_feeding_fp16_ops(export.convert_coreml(Stock(classifier), 512))
    assert found and all(item["value"] == -np.inf for item in found)


def test_coreml_predictions_are_compared_only_where_a_runtime_exists(coreml_export):
    _, document = coreml_export
    if sys.platform == "darwin" and export.coreml_runtime() is None:
        assert document["parity"]["status"] == "checked" and document["parity"]["argmax_agreement"] > 0.99
    else:
        assert document["parity"] == {"status": "skipped", "reason": export.coreml_runtime()}
        assert "macOS" in document["parity"]["reason"] or sys.platform == "darwin"


def test_an_upload_to_s3_puts_every_marker_after_the_files_it_vouches_for(tmp_path, monkeypatch):
    folder = tmp_path / "v2"
    for name in ("export.json", COMPLETE_MARKER, "onnx/model.onnx", f"onnx/{COMPLETE_MARKER}", "coreml/a/b.bin"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    calls = []
    monkeypatch.setattr(export.storage, "write_bytes", lambda uri, data: calls.append(("put", uri)))
    monkeypatch.setattr(export.storage, "delete", lambda uri: calls.append(("delete", uri)))
    export.upload_export(folder, "s3://bucket/models/exported/v2")
    prefix = "s3://bucket/models/exported/v2/"
    assert calls[0] == ("delete", prefix + COMPLETE_MARKER), "the old export stops counting before it is replaced"
    puts = [uri[len(prefix) :] for kind, uri in calls if kind == "put"]
    assert puts[-2:] == [f"onnx/{COMPLETE_MARKER}", COMPLETE_MARKER]
    assert sorted(puts) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    calls.clear()
    listed = [prefix + "export.json", "s3://bucket/models/exported/v1/onnx/model.onnx"]
    monkeypatch.setattr(export.storage, "list_files", lambda uri: iter(listed))
    export._remove_other_versions("s3://bucket/models/exported", "v2")
    assert calls == [("delete", "s3://bucket/models/exported/v1/onnx/model.onnx")]
