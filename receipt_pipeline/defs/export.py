"""The production model exported for other runtimes: ONNX (float32 and int8) and Core ML, checked first."""

from typing import Literal

import dagster as dg
from pydantic import Field

from receipt_pipeline.core import export, inference
from receipt_pipeline.core.base_model import tokenizer_fingerprint
from receipt_pipeline.core.windows import WindowSet
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "inference"


class ExportConfig(dg.Config):
    split: Literal["train", "validation", "test"] = Field(
        default="test", description="The windowed_tensors split the exports are checked on against PyTorch."
    )
    coreml: bool = Field(default=True, description="Also convert to Core ML (where coremltools is installed).")
    coreml_quantize: Literal["float16", "int8"] = Field(
        default="float16", description="float16: the ML program as converted; int8: its weights int8 as well."
    )
    fuse: bool = Field(
        default=True,
        description="Run onnxruntime's transformer optimizer (attention, LayerNorm, GELU fusions) before "
        "quantising; off: standard ONNX operators only, for runtimes other than onnxruntime.",
    )


def _mib(size: int | None) -> float:
    return round(size / 2**20, 2) if size else 0.0


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"onnx", "coreml"},
    description="The production model exported: ONNX float32 (dynamic batch and sequence axes) and its int8 "
    "dynamic quantisation, checked with onnxruntime against PyTorch on the test windows (argmax on 99.9% of "
    "tokens, entity F1 within 0.001), and Core ML (ML program, float16) with its spec checked. Under "
    "models/exported/<model version>, COMPLETE marker last.",
)
def exported_model(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    settings: PipelineSettings,
    production_model: dict,
    windowed_tensors: dict,
) -> dg.Output[dict]:
    loaded = inference.load_model(production_model["path"])
    expected = production_model.get("checkpoint", {}).get("version")
    if expected and loaded.version != expected:
        raise dg.Failure(
            f"{production_model['path']} holds model {loaded.version}, not {expected} that production_model "
            "materialised: materialise production_model again"
        )
    cut_with = windowed_tensors.get("tokenizer", {}).get("fingerprint")
    if cut_with and cut_with != tokenizer_fingerprint(loaded.tokenizer):
        raise dg.Failure(
            "windowed_tensors were cut with another tokenizer than the production model's: materialise "
            "windowed_tensors for this model before exporting it"
        )
    windows = WindowSet(windowed_tensors, config.split)
    if not len(windows):
        raise dg.Failure(f"windowed_tensors has no {config.split} windows to check the exports on")
    document = export.export_production(
        loaded.folder,
        export.exported_root(settings.artifact_root),
        loaded.version,
        windows,
        loaded.pad_token_id,
        coreml=config.coreml,
        coreml_quantize=config.coreml_quantize,
        fuse=config.fuse,
    )
    onnx = document["onnx"]
    fp32, int8 = onnx["parity"]["float32"], onnx["parity"].get("int8", {})
    coreml = document["coreml"]
    context.log.info(
        f"exported {loaded.version} to {document['path']}: ONNX argmax agreement {fp32['argmax_agreement']:.4%}, "
        f"int8 entity F1 change {int8.get('entity_f1_change', float('nan')):+.4f}; Core ML "
        f"{coreml.get('status', 'converted')}"
    )
    metadata = {
        "path": dg.MetadataValue.path(document["path"]),
        "model_version": loaded.version,
        "check_split": config.split,
        "check_tokens": fp32["tokens"],
        "onnx_argmax_agreement": fp32["argmax_agreement"],
        "pytorch_entity_f1": fp32["reference_entity_f1"],
        "onnx_entity_f1": fp32["entity_f1"],
        "onnx_mib": _mib(onnx["files"]["float32"]["bytes"]),
        "onnx_fused_operators": dg.MetadataValue.json(onnx.get("fused_operators", {})),
        "onnx_int8_argmax_agreement": int8.get("argmax_agreement", float("nan")),
        "onnx_int8_entity_f1": int8.get("entity_f1", float("nan")),
        "onnx_int8_entity_f1_change": int8.get("entity_f1_change", float("nan")),
        "onnx_int8_mib": _mib(onnx["files"].get("int8", {}).get("bytes")),
        "coreml": coreml.get("status", "converted"),
    }
    if "spec" in coreml:
        metadata |= {
            "coreml_mib": _mib(coreml["bytes"]),
            "coreml_quantize": coreml["quantize"],
            "coreml_spec": dg.MetadataValue.json({k: coreml["spec"][k] for k in ("inputs", "outputs")}),
            "coreml_infinite_fp16_constants": len(coreml["infinite_constants_feeding_fp16_ops"]),
        }
        checked = coreml.get("parity", {})
        metadata["coreml_prediction_check"] = checked.get("reason") or checked.get("status", "no windows")
        if checked.get("status") == "checked":
            metadata["coreml_argmax_agreement"] = checked["argmax_agreement"]
            metadata["coreml_entity_f1"] = checked["entity_f1"]
    else:
        metadata["coreml_skipped_because"] = coreml.get("reason", "")
    return dg.Output(document, data_version=dg.DataVersion(loaded.version), metadata=metadata)
