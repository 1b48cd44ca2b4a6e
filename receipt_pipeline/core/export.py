"""The production model exported for other runtimes: ONNX for onnxruntime (float32 with dynamic batch and
sequence axes, and its int8 dynamic quantisation beside it) and Core ML (an ML program in float16, weights
optionally int8) for Apple devices.

What is exported is :func:`export_module`: the token classifier with its attention mask made
``(1 - mask) * -1e4`` instead of LayoutLM's ``(1 - mask) * torch.finfo(float32).min``. In a float16 graph
that minimum becomes -inf, and ``0 * -inf`` is NaN on every real token; -1e4 is finite in float16 and
still drives a padded key's softmax weight to zero. :func:`infinite_constants_feeding_fp16_ops` inspects a
converted Core ML program for exactly that trap.

Every export is written into a staging folder beside its target, given its ``COMPLETE`` marker last and
renamed into place, so a crash mid-write leaves no folder that :func:`require_complete` accepts. An export
checked against windows (:func:`check_onnx`) is only marked complete when float32 ONNX agrees with PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from receipt_pipeline.core import storage
from receipt_pipeline.core.batching import WindowCollator
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER, mark_complete
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.evaluation import (
    load_classifier,
    overall_entity_scores,
    predict,
    repair_bio,
    true_receipt_tags,
)
from receipt_pipeline.core.windows import WindowSet, merge_word_predictions

MANIFEST = "export.json"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
# onnxruntime's quantize_dynamic settings for the int8 graph beside the float32 one
INT8_OPTIONS = {"per_channel": True}
COREML_PACKAGE = "model.mlpackage"
INPUTS = ("input_ids", "bbox", "attention_mask")
OUTPUT = "logits"
# finite in float16 (whose largest is 65504); exp(-1e4) is 0 in every precision. ORT's attention fusion
# takes -10000 as its default mask filter value, so the fused kernel masks the same way.
MASK_FILL = -1.0e4
# float32 ONNX against PyTorch on the same windows: the bar for an export to be published
MIN_ARGMAX_AGREEMENT = 0.999
MAX_ENTITY_F1_DIFFERENCE = 0.001
COREML_MAX_BATCH = 64
# files a consumer needs beside the graph: the tokenizer that cuts its windows and the tag names of its outputs
SIDECAR_FILES = (
    "config.json",
    "label_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_ATTENTION = "receipt_pipeline_export"


class ExportError(ExplainedError, RuntimeError):
    """A model cannot be exported, or an export cannot be used; the message names the folder and the cause."""


class ParityError(ExportError):
    """The exported graph predicts differently from PyTorch on the same windows: it is not published."""


# ------------------------------------------------------------------------------------------ the graph


def _export_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # eager attention written as BERT's original graph (scores / sqrt(d) + mask): the pattern onnxruntime's
    # transformer optimizer recognises and fuses into one Attention kernel; the stock Mul-by-scaling form
    # leaves two Mul parents on the mask Add and the fusion gives up
    import torch

    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def export_module(model_dir: str | Path):
    """The classifier of ``model_dir`` as ``(input_ids, bbox, attention_mask) -> logits``, mask fill -1e4."""
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, _export_attention)
    model = load_classifier(str(model_dir)).eval()
    model.config._attn_implementation = _ATTENTION

    class ExportModule(torch.nn.Module):
        def __init__(self, classifier) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, bbox, attention_mask):
            layoutlm = self.classifier.layoutlm
            embeddings = layoutlm.embeddings(input_ids=input_ids, bbox=bbox)
            mask = (1.0 - attention_mask[:, None, None, :].to(embeddings.dtype)) * MASK_FILL
            hidden = layoutlm.encoder(embeddings, mask).last_hidden_state
            # the pooler and the dropout are skipped: a token classifier in eval mode uses neither
            return self.classifier.classifier(hidden)

    return ExportModule(model).eval()


def _example_inputs(dtype, batch: int = 2, length: int = 16):
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (batch, length), generator=generator, dtype=dtype)
    corner = torch.randint(0, 500, (batch, length, 2), generator=generator, dtype=dtype)
    bbox = torch.cat([corner, corner + 10], dim=-1)
    mask = torch.ones(batch, length, dtype=dtype)
    mask[1, length // 2 :] = 0
    return input_ids, bbox, mask


# ------------------------------------------------------------------------------------------ atomic folders


@contextlib.contextmanager
def staged_folder(target: str | Path, payload: Mapping | None = None) -> Iterator[Path]:
    """A fresh staging folder beside ``target``: on success it gets its ``COMPLETE`` marker (``payload``) last
    and replaces ``target``; on any error it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        mark_complete(staging, dict(payload or {}))
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_folder(source: Path, target: Path) -> None:
    """``source`` renamed to ``target``; a previous ``target`` is moved aside first and removed after, so at no
    moment does ``target`` hold a mix of the two."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def require_complete(folder: str | Path) -> Path:
    """``folder`` if its ``COMPLETE`` marker is there; an export cut short (or being written) is refused."""
    folder = Path(folder)
    if not (folder / COMPLETE_MARKER).is_file():
        raise ExportError(f"{folder}: no {COMPLETE_MARKER} marker, so not a finished export (cut short, or never made)")
    return folder


def _copy_sidecars(model_dir: Path, folder: Path) -> list[str]:
    copied = []
    for name in SIDECAR_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, folder / name)
            copied.append(name)
    return copied


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# ------------------------------------------------------------------------------------------ ONNX


def _split_mask_unsqueeze(model) -> bool:
    """The exporter's optimiser merges the mask's two Unsqueezes into one with axes [1, 2]; onnxruntime's
    attention fusion matches the mask path as two single-axis Unsqueezes. Split it back (same values)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    for position, node in enumerate(graph.node):
        if node.op_type != "Unsqueeze" or node.input[0] != "attention_mask" or len(node.input) < 2:
            continue
        axes = constants.get(node.input[1])
        if axes is None or axes.tolist() != [1, 2]:
            return False
        graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "export_mask_axis"))
        first = helper.make_node("Unsqueeze", ["attention_mask", "export_mask_axis"], ["export_mask_1"])
        second = helper.make_node("Unsqueeze", ["export_mask_1", "export_mask_axis"], [node.output[0]])
        graph.node.remove(node)
        graph.node.insert(position, second)
        graph.node.insert(position, first)
        return True
    return False


def _fuse(plain: Path, fused: Path, config) -> dict[str, int]:
    """onnxruntime's transformer optimizer (attention, SkipLayerNorm and bias-GELU fusions) on ``plain``; the
    attention keeps the raw 0/1 mask, so it does not assume right padding."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_raw_attention_mask(True)
    optimized = optimize_model(
        str(plain),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
    )
    optimized.save_model_to_file(str(fused))
    return {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    quantize_int8: bool = True,
    *,
    fuse: bool = True,
    windows: WindowSet | None = None,
    pad_token_id: int | None = None,
) -> dict:
    """``out_dir`` with ``model.onnx`` (float32, batch and sequence axes dynamic, opset 20 from
    ``torch.onnx.export(dynamo=True)``), with ``fuse`` run through onnxruntime's transformer optimizer (its
    fused kernels run in onnxruntime only), ``model.int8.onnx`` (dynamic int8 quantisation of it) with
    ``quantize_int8``, the tokenizer and label files, and ``export.json``. With ``windows`` the graphs are
    checked against PyTorch first (:func:`check_onnx`) and a float32 graph that fails is never published.
    Returns the export.json document."""
    import onnx
    import torch

    model_dir = Path(model_dir)
    module = export_module(model_dir)
    config = module.classifier.config
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=config.max_position_embeddings)
    document: dict = {
        "format": "onnx",
        "source": str(model_dir),
        "inputs": {name: "int64" for name in INPUTS},
        "input_shapes": {
            "input_ids": ["batch", "sequence"],
            "bbox": ["batch", "sequence", 4],
            "attention_mask": ["batch", "sequence"],
        },  # fmt: skip
        "output": {OUTPUT: ["batch", "sequence", config.num_labels]},
        "max_sequence": config.max_position_embeddings,
        "attention_mask_fill": MASK_FILL,
        "tags": [config.id2label[i] for i in range(config.num_labels)],
        "versions": _versions("torch", "transformers", "onnx", "onnxruntime", "onnxscript"),
    }
    with staged_folder(out_dir, {"format": "onnx"}) as staging:
        plain = staging / ("plain.onnx" if fuse else ONNX_FILE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                _example_inputs(torch.int64),
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        graph = program.model_proto
        document["opset"] = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        if fuse:
            document["mask_unsqueeze_split"] = _split_mask_unsqueeze(graph)
            onnx.save(graph, str(plain))
            document["fused_operators"] = _fuse(plain, staging / ONNX_FILE, config)
            plain.unlink()
            document["runtime"] = "onnxruntime (com.microsoft fused operators)"
        else:
            onnx.save(graph, str(plain))
            document["runtime"] = "any ONNX runtime (standard operators only)"
        files = {"float32": ONNX_FILE}
        if quantize_int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # one scale per output channel: on the compact model's held-back SROIE receipts one scale per matrix
            # changed 0.62% of tokens' argmax against PyTorch and per channel 0.21%, at the same size and 7% less
            # throughput (export-inference in BENCHMARKS.md)
            quantize_dynamic(
                str(staging / ONNX_FILE), str(staging / ONNX_INT8_FILE), weight_type=QuantType.QInt8, **INT8_OPTIONS
            )
            document["int8_quantization"] = {"method": "dynamic", "weights": "int8", **INT8_OPTIONS}
            files["int8"] = ONNX_INT8_FILE
        document["files"] = {
            precision: {"file": name, "bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)}
            for precision, name in files.items()
        }
        document["sidecars"] = _copy_sidecars(model_dir, staging)
        if windows is not None:
            # the reference is the stock classifier (its own attention and mask), not the module exported
            document["parity"] = check_onnx(staging, windows, pad_token_id or 0, model_dir=model_dir)
            fp32 = document["parity"]["float32"]
            if not fp32["passed"]:
                raise ParityError(
                    f"ONNX export of {model_dir}: float32 argmax agrees with PyTorch on {fp32['argmax_agreement']:.4%}"
                    f" of {fp32['tokens']} tokens (needs {MIN_ARGMAX_AGREEMENT:.1%}), entity F1 "
                    f"{fp32['entity_f1']:.4f} against {fp32['reference_entity_f1']:.4f} (needs within "
                    f"{MAX_ENTITY_F1_DIFFERENCE}): not published"
                )
        (staging / MANIFEST).write_text(json.dumps(document, indent=2, sort_keys=True))
    return document


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for a graph of a complete export folder."""
    import onnxruntime as ort

    path = Path(path)
    require_complete(path.parent)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the optimizer's leftover-initializer notices are not the user's concern
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batches(windows: WindowSet, pad_token_id: int, batch_size: int = 8) -> Iterator[tuple[np.ndarray, dict]]:
    """(window indices, padded int64 numpy inputs) batches, longest windows first to pad little."""
    collate = WindowCollator(pad_token_id)
    order = np.argsort(-windows.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        batch = collate([windows[int(i)] for i in chosen])
        yield chosen, {name: batch[name].numpy() for name in INPUTS}


def onnx_predict(session, windows: WindowSet, pad_token_id: int, batch_size: int = 8) -> list[np.ndarray]:
    """The predicted tag id of every token of every window, as :func:`evaluation.predict` gives PyTorch's."""
    predictions: list[np.ndarray | None] = [None] * len(windows)
    for chosen, feed in batches(windows, pad_token_id, batch_size):
        ids = session.run([OUTPUT], feed)[0].argmax(axis=-1)
        for row, index in enumerate(chosen):
            predictions[int(index)] = ids[row, : windows.lengths[int(index)]]
    return predictions  # type: ignore[return-value]


def named_receipt_tags(windows: WindowSet, predictions: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Repaired tags per receipt, prediction ids read through the model's own tag names."""
    merged = merge_word_predictions(windows, predictions)
    return {key: repair_bio([names[i] if i >= 0 else OUTSIDE for i in ids.tolist()]) for key, ids in merged.items()}


def parity(
    windows: WindowSet, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], names: Sequence[str]
) -> dict:
    """Token argmax agreement of ``candidate`` with ``reference`` (every real token of every window) and both
    entity F1s (seqeval, strict IOB2, windows merged per receipt) against the windows' true tags."""
    tokens = int(sum(len(r) for r in reference))
    same = int(sum(int(np.sum(np.asarray(r) == np.asarray(c))) for r, c in zip(reference, candidate, strict=True)))
    truth = true_receipt_tags(windows)
    reference_f1 = overall_entity_scores(truth, named_receipt_tags(windows, reference, names))["f1"]
    f1 = overall_entity_scores(truth, named_receipt_tags(windows, candidate, names))["f1"]
    agreement = same / tokens if tokens else 1.0
    return {
        "tokens": tokens,
        "windows": len(windows),
        "receipts": len(truth),
        "argmax_agreement": agreement,
        "reference_entity_f1": reference_f1,
        "entity_f1": f1,
        "entity_f1_change": f1 - reference_f1,
        "passed": agreement >= MIN_ARGMAX_AGREEMENT and abs(f1 - reference_f1) <= MAX_ENTITY_F1_DIFFERENCE,
    }


def check_onnx(
    onnx_dir: str | Path, windows: WindowSet, pad_token_id: int, *, model=None, model_dir: str | Path | None = None
) -> dict:
    """Each graph of ``onnx_dir`` against the PyTorch classifier (``model``, or loaded from ``model_dir``) on
    the same windows: {"float32": parity, "int8": parity, "thresholds"}. Only float32 must pass
    (:data:`MIN_ARGMAX_AGREEMENT`, :data:`MAX_ENTITY_F1_DIFFERENCE`); int8's F1 change is what it costs."""
    onnx_dir = Path(onnx_dir)
    if model is None:
        model = load_classifier(str(model_dir))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    reference = predict(model, windows, pad_token_id, batch_size=8)
    results: dict = {
        "thresholds": {"argmax_agreement": MIN_ARGMAX_AGREEMENT, "entity_f1_difference": MAX_ENTITY_F1_DIFFERENCE}
    }
    for precision, name in (("float32", ONNX_FILE), ("int8", ONNX_INT8_FILE)):
        if not (onnx_dir / name).is_file():
            continue
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(onnx_dir / name), options, providers=["CPUExecutionProvider"])
        results[precision] = parity(windows, reference, onnx_predict(session, windows, pad_token_id), names)
        results[precision]["bytes"] = (onnx_dir / name).stat().st_size
    if "int8" in results:
        results["int8"].pop("passed")  # no bar: its F1 change is the price of its size and speed, reported
    return results


# ------------------------------------------------------------------------------------------ Core ML


class CoreMLUnavailable(ExportError):
    """coremltools is not installed: ``pip install 'receipt_pipeline[coreml]'``."""


def _coremltools():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
    except ImportError as error:
        raise CoreMLUnavailable(
            f"Core ML export needs coremltools ({error}): pip install 'receipt_pipeline[coreml]'"
        ) from None
    return coremltools


def coreml_runtime() -> str | None:
    """Why Core ML cannot predict here, or None where it can (macOS with coremltools' native module)."""
    if sys.platform != "darwin":
        return f"no Core ML runtime on {sys.platform}: coremltools predicts on macOS only"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as error:
        return f"coremltools has no native runtime module here ({error})"
    return None


def export_coreml(
    model_dir: str | Path,
    out_dir: str | Path,
    quantize: str = "float16",
    *,
    windows: WindowSet | None = None,
    pad_token_id: int | None = None,
    max_batch: int = COREML_MAX_BATCH,
) -> dict:
    """``out_dir`` with ``model.mlpackage`` (an ML program computing in float16; with ``quantize="int8"`` its
    weights linearly quantised to int8 by coremltools.optimize), batch 1..``max_batch`` and sequence
    1..max positions as ranges, the tokenizer and label files and ``export.json``: the spec's inputs and
    outputs, and the infinite constants that feed float16 operations (there must be none, or nothing is
    published). With ``windows``, predictions are compared with PyTorch where a Core ML runtime exists."""
    if quantize not in ("float16", "int8"):
        raise ExportError(f"Core ML quantize must be float16 or int8, got {quantize!r}")
    model_dir = Path(model_dir)
    module = export_module(model_dir)
    config = module.classifier.config
    mlmodel = convert_coreml(module, config.max_position_embeddings, quantize, max_batch)
    tags = [config.id2label[i] for i in range(config.num_labels)]
    mlmodel.short_description = f"LayoutLM token classifier of {len(tags)} tags (receipt_pipeline)"
    mlmodel.user_defined_metadata["tags"] = json.dumps(tags)
    mlmodel.user_defined_metadata["attention_mask_fill"] = str(MASK_FILL)
    with staged_folder(out_dir, {"format": "coreml", "quantize": quantize}) as staging:
        package = staging / COREML_PACKAGE
        mlmodel.save(str(package))
        infinite = infinite_constants_feeding_fp16_ops(package)
        if infinite:
            raise ExportError(
                f"Core ML export of {model_dir}: {len(infinite)} float16 operations are fed infinite constants "
                f"(first: {infinite[0]}); on a device they turn real tokens into NaN: not published"
            )
        document = {
            "format": "coreml",
            "source": str(model_dir),
            "file": COREML_PACKAGE,
            "bytes": _folder_bytes(package),
            "quantize": quantize,
            "compute_precision": "float16",
            "spec": coreml_spec_summary(package),
            "infinite_constants_feeding_fp16_ops": infinite,
            "attention_mask_fill": MASK_FILL,
            "tags": tags,
            "sidecars": _copy_sidecars(model_dir, staging),
            "versions": _versions("torch", "transformers", "coremltools"),
        }
        if windows is not None:
            document["parity"] = check_coreml(package, windows, pad_token_id or 0, model_dir=model_dir)
        (staging / MANIFEST).write_text(json.dumps(document, indent=2, sort_keys=True))
    return document


def convert_coreml(module, max_sequence: int, quantize: str = "float16", max_batch: int = COREML_MAX_BATCH):
    """``module`` ((input_ids, bbox, attention_mask) -> logits, int32 inputs) traced and converted to an ML
    program computing in float16, batch and sequence as ranges; weights int8 with ``quantize="int8"``."""
    ct = _coremltools()
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, _example_inputs(torch.int32))
        batch = ct.RangeDim(1, max_batch, default=1, symbol="batch")
        sequence = ct.RangeDim(1, max_sequence, default=max_sequence, symbol="sequence")
        mlmodel = ct.convert(
            traced,
            inputs=[
                ct.TensorType("input_ids", shape=(batch, sequence), dtype=np.int32),
                ct.TensorType("bbox", shape=(batch, sequence, 4), dtype=np.int32),
                ct.TensorType("attention_mask", shape=(batch, sequence), dtype=np.int32),
            ],
            outputs=[ct.TensorType(OUTPUT)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,  # the first with int8 weight ops (constexpr)
        )
        if quantize == "int8":
            from coremltools.optimize import coreml as optimize

            weights = optimize.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
            mlmodel = optimize.linear_quantize_weights(mlmodel, optimize.OptimizationConfig(global_config=weights))
    return mlmodel


def _mil_program(package: str | Path):
    """The MIL program of a saved ML program package, rebuilt from its protobuf and weights (no runtime)."""
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    spec = mlmodel.get_spec()
    return load_milproto(
        model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir
    )


def _operations(block) -> Iterator:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def infinite_constants_feeding_fp16_ops(package_or_program) -> list[dict]:
    """Every input of a float16 operation whose constant value is infinite, or becomes so in float16 (a float32
    constant beyond 65504 that the op casts down), in a saved ``.mlpackage`` or a MIL program: where LayoutLM's
    ``finfo(float32).min`` mask would turn into -inf and ``0 * -inf`` into NaN. Also takes a converted MLModel."""
    from coremltools.converters.mil.mil import types

    program = package_or_program
    if isinstance(program, str | Path):
        program = _mil_program(program)
    elif hasattr(program, "_mil_program"):  # an MLModel fresh from ct.convert
        program = program._mil_program
    found = []
    for function in program.functions.values():
        for op in _operations(function):
            computes_fp16 = any(getattr(out, "dtype", None) == types.fp16 for out in op.outputs)
            if not computes_fp16:
                continue
            for name, given in op.inputs.items():
                for var in given if isinstance(given, list | tuple) else (given,):
                    value = getattr(var, "val", None)
                    if value is None:
                        continue
                    array = np.asarray(value)
                    if array.dtype.kind != "f" or not array.size:
                        continue
                    with np.errstate(over="ignore"):
                        infinite = np.isinf(array) | np.isinf(array.astype(np.float16))
                    if infinite.any():
                        found.append(
                            {
                                "op": op.name,
                                "op_type": op.op_type,
                                "input": name,
                                "value": float(array[infinite].flat[0]),
                                "dtype": str(array.dtype),
                            }
                        )
    return found


def coreml_spec_summary(package: str | Path) -> dict:
    """A saved ``.mlpackage``'s interface as its spec states it: each input's and output's type, default shape
    and shape ranges; the specification version; and the MIL operation counts by type and output dtype."""
    ct = _coremltools()
    from coremltools.converters.mil.mil import types

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()

    data_types = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

    def described(feature) -> dict:
        array = feature.type.multiArrayType
        ranges = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        return {
            "name": feature.name,
            "dtype": data_types.Name(array.dataType).lower(),
            "shape": list(array.shape),
            "ranges": ranges,
        }

    program = _mil_program(package)
    ops: dict[str, int] = {}
    precision = {"float16": 0, "float32": 0}
    for function in program.functions.values():
        for op in _operations(function):
            ops[op.op_type] = ops.get(op.op_type, 0) + 1
            dtypes = {getattr(out, "dtype", None) for out in op.outputs}
            if op.op_type != "const":
                precision["float16"] += types.fp16 in dtypes
                precision["float32"] += types.fp32 in dtypes
    return {
        "specification_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [described(f) for f in spec.description.input],
        "outputs": [described(f) for f in spec.description.output],
        "operations": dict(sorted(ops.items())),
        "operations_by_output_dtype": precision,
    }


def check_coreml(package: str | Path, windows: WindowSet, pad_token_id: int, *, model=None, model_dir=None) -> dict:
    """Core ML's predictions against PyTorch's on ``windows`` (:func:`parity`), or {"status": "skipped",
    "reason"} where no Core ML runtime exists (anywhere but macOS)."""
    reason = coreml_runtime()
    if reason:
        return {"status": "skipped", "reason": reason}
    ct = _coremltools()
    model = model if model is not None else load_classifier(str(model_dir))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    reference = predict(model, windows, pad_token_id, batch_size=8)
    mlmodel = ct.models.MLModel(str(package))
    predictions: list[np.ndarray | None] = [None] * len(windows)
    for chosen, feed in batches(windows, pad_token_id, batch_size=8):
        logits = mlmodel.predict({name: array.astype(np.int32) for name, array in feed.items()})[OUTPUT]
        ids = np.asarray(logits).argmax(axis=-1)
        for row, index in enumerate(chosen):
            predictions[int(index)] = ids[row, : windows.lengths[int(index)]]
    return {"status": "checked", **parity(windows, reference, predictions, names)}


# ------------------------------------------------------------------------------------------ the asset's export


def exported_root(artifact_root: str) -> str:
    """Where a deployment keeps the exports of its production model: ``models/exported`` under its artifacts."""
    return storage.join(artifact_root, "models", "exported")


def export_production(
    model_dir: str | Path,
    target: str,
    version: str,
    windows: WindowSet,
    pad_token_id: int,
    *,
    coreml: bool = True,
    coreml_quantize: str = "float16",
    fuse: bool = True,
) -> dict:
    """The production model's exports under ``target/<version>/``: ``onnx/`` (float32 and int8, checked on
    ``windows``) and ``coreml/`` (where coremltools is installed and ``coreml``), ``export.json`` and the
    ``COMPLETE`` marker last; other versions' folders are removed once it is complete. ``target`` is a folder
    or an ``s3://`` prefix (built locally, then uploaded with the markers last)."""
    document: dict = {"version": version, "source": str(model_dir)}
    local = not storage.is_s3(target)
    destination = storage.join(target, version)
    scratch = None if local else tempfile.mkdtemp(prefix="exported-model-")
    try:
        build_target = Path(destination) if local else Path(scratch) / version
        with staged_folder(build_target, {"version": version}) as staging:
            document["onnx"] = export_onnx(
                model_dir, staging / "onnx", fuse=fuse, windows=windows, pad_token_id=pad_token_id
            )
            if coreml:
                try:
                    document["coreml"] = export_coreml(
                        model_dir, staging / "coreml", coreml_quantize, windows=windows, pad_token_id=pad_token_id
                    )
                except CoreMLUnavailable as error:
                    document["coreml"] = {"status": "skipped", "reason": str(error)}
            else:
                document["coreml"] = {"status": "skipped", "reason": "not asked for"}
            (staging / MANIFEST).write_text(json.dumps(document, indent=2, sort_keys=True))
        if not local:
            upload_export(build_target, destination)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    _remove_other_versions(target, version)
    return {**document, "path": destination}


def upload_export(folder: Path, prefix: str) -> list[str]:
    """Every file of ``folder`` under ``prefix``, each ``COMPLETE`` marker after all other files, the top one
    last; the old top marker is removed first so a reader never takes a half-replaced upload for whole."""
    storage.delete(storage.join(prefix, COMPLETE_MARKER))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    markers = sorted((p for p in files if p.name == COMPLETE_MARKER), key=lambda p: -len(p.relative_to(folder).parts))
    uploaded = []
    for path in [p for p in files if p.name != COMPLETE_MARKER] + markers:
        uri = storage.join(prefix, *path.relative_to(folder).parts)
        storage.write_bytes(uri, path.read_bytes())
        uploaded.append(uri)
    return uploaded


def _remove_other_versions(target: str, keep: str) -> None:
    if storage.is_s3(target):
        base = target.rstrip("/") + "/"
        for uri in storage.list_files(target):
            if uri[len(base) :].split("/", 1)[0] != keep:
                storage.delete(uri)
        return
    root = Path(target)
    for child in root.iterdir() if root.is_dir() else ():
        if child.is_dir() and child.name != keep and not child.name.startswith("."):
            shutil.rmtree(child, ignore_errors=True)
