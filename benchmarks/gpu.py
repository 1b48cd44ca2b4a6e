"""GPU training throughput of a layoutlm-base-sized token classifier: tokens/s, MFU, peak memory, batch size.

python -m benchmarks.gpu [--batch-sizes 8 16 ...] [--precisions bf16 fp16] [--steps N]
                                                [--out DIR] [--compile-only] [--time-budget S] (--help: all)

The model is `LayoutLMForTokenClassification(LayoutLMConfig(num_labels=13))`: the layoutlm-base shape (12 layers,
hidden 768, 12 heads, intermediate 3072, vocabulary 30522, 512 positions), randomly initialised, since the
benchmark must run where the hub cannot be reached. Every input is a synthetic full window of 512 tokens
(``input_ids``, ``bbox`` in 0..1000 with x0 <= x1 and y0 <= y1, an all-ones ``attention_mask``, ``labels``), one
batch made on the GPU and reused, so the numbers are the GPU's and leave out the input pipeline.

A training step is forward + backward + AdamW step under ``torch.autocast`` (bf16, or fp16 with a GradScaler).
Per configuration: the median of ``--steps`` timed steps (at least 5) after ``--warmup`` steps, with
``torch.cuda.synchronize`` around each; tokens/s = batch x 512 / median step seconds; peak memory is
``torch.cuda.max_memory_allocated`` from an empty GPU (weights, gradients, AdamW state and activations), reset for
every configuration; an out-of-memory error frees the cache and marks the row OOM.

MFU (model FLOPs utilisation) = training FLOPs per token x tokens/s / the GPU's peak dense bf16/fp16 tensor FLOP/s,
with the usual estimate of training FLOPs per token (forward + backward = 3 x forward):

    6 x N + 12 x L x H x S

where N is the non-embedding parameter count (the encoder and the classifier: the embedding tables are looked up,
not multiplied, and the pooler only sees the first token), L the number of layers, H the hidden size and S the
sequence length (the 12 x L x H x S term is the attention matmuls QK^T and AV). For layoutlm-base at S = 512:
6 x 85.06 M + 12 x 12 x 768 x 512 = 567 MFLOP per token. Peak FLOP/s by GPU name: PEAK_TFLOPS below.

Stages, in order:
  0. the attention kernels alone: one layer's SDPA call, forward and backward, each kernel forced alone, with
     LayoutLM's additive padding mask and without (``--attention-batch-size``);
  1. optimisations: eager against SDPA attention (in PyTorch's kernel order and with cuDNN's kernel first),
     foreach against fused AdamW, at ``--optimisation-batch-sizes`` (bf16, TF32 on); the fastest becomes the
     recommended setting used by every later stage;
  2. the sweep: ``--batch-sizes`` x ``--precisions`` x TF32 on and off with the recommended setting; the
     largest bf16 step is profiled (where its GPU time goes, by kernel kind: KERNEL_KINDS);
  3. ``auto_batch_size``: the largest batch that fits (doubling from 8 until OOM, then bisecting), measured;
  4. torch.compile of the recommended setting, each row in a child process given up after
     ``--compile-timeout`` seconds and profiled: at each of ``--compile-batch-sizes``, then at the largest each
     of ``--compile-modes`` and ``--compile-dropouts`` (the dropout switched off, to show what it costs);
     ``--compile-only`` runs this stage alone;
  5. the recommended batch per EC2 instance type, from the measured peak memory (INSTANCE_GPUS).

Without a CUDA device every row is marked "not measured: no CUDA device" and nothing is trained.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

SEQUENCE_LENGTH = 512
NUM_LABELS = 13  # the pipeline's SROIE tags and more: the classifier is a rounding error either way
DEFAULT_BATCH_SIZES = (8, 16, 32, 64, 128, 256)
PRECISIONS = ("bf16", "fp16")
DEFAULT_STEPS = 10
MIN_STEPS = 5
DEFAULT_WARMUP = 3
HEADROOM = 0.15  # of the GPU's memory left free by a recommended batch: CUDA context, allocator fragmentation

# Peak dense (not sparse) bf16/fp16 tensor-core TFLOP/s, matched in order against the words of the lower-cased
# torch.cuda.get_device_name(): the first entry whose every word occurs in the name wins, so "h100 pcie"
# must come before "h100" (the SXM part reports as "NVIDIA H100 80GB HBM3"). Whole words, so that an L40S is not
# taken for an L4.
PEAK_TFLOPS = (
    (("h200",), 989.0),
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.0),
    (("a100",), 312.0),
    (("a10g",), 125.0),
    (("l4",), 121.0),
)

# EC2 GPU instance families the launcher uses, and the memory nvidia-smi reports for their GPU, in MiB.
INSTANCE_GPUS = (
    ("g5", "A10G", 23028),
    ("g6", "L4", 23034),
    ("p5", "H100", 81559),
)


@dataclass(frozen=True)
class StepConfig:
    """One measured configuration of the training step."""

    batch_size: int
    precision: str = "bf16"  # the autocast dtype: "bf16" or "fp16" (with a GradScaler)
    tf32: bool = True  # TF32 for the float32 matmuls autocast leaves (and cuDNN)
    attention: str = "sdpa"  # the attn_implementation asked for: "sdpa" or "eager"
    # SDPA's kernel order: "torch" (PyTorch's own, what training uses) or "cudnn-first"
    kernels: str = "torch"
    fused_adamw: bool = True  # torch.optim.AdamW(fused=True), else foreach=True
    compile: bool = False  # torch.compile the model
    compile_mode: str | None = None  # torch.compile's mode: None (default), "max-autotune-no-cudagraphs", ...
    # "model": layoutlm-base's dropout (0.1 on hidden states and attention probabilities), as training uses;
    # "no attention dropout" or "none" measure what the dropout costs, not a setting the pipeline uses
    dropout: str = "model"

    def setting(self) -> str:
        """The optimisation setting, without batch size and precision."""
        optimizer = "fused AdamW" if self.fused_adamw else "foreach AdamW"
        attention = self.attention
        if self.attention == "sdpa":
            attention += ", cuDNN first" if self.kernels == "cudnn-first" else ", PyTorch's kernel order"
        compiled = f", torch.compile ({self.compile_mode or 'default'})" if self.compile else ""
        dropout = "" if self.dropout == "model" else f", dropout: {self.dropout}"
        return f"{attention} attention, {optimizer}{compiled}{dropout}"


# ------------------------------------------------------------------------------------------- the model


def model_config():
    from transformers import LayoutLMConfig

    return LayoutLMConfig(num_labels=NUM_LABELS)


# LayoutLM declares SDPA support (``_supports_sdpa``) only from a later transformers 5 release, but its attention
# already goes through ALL_ATTENTION_FUNCTIONS before that: transformers' own SDPA function registered under a
# name of its own reaches the same kernel. The name must not contain "sdpa", which triggers the declared-support
# check that refuses the model.
REGISTERED_SDPA = "torch_sdp"


def register_sdpa() -> bool:
    """Register transformers' SDPA attention function as REGISTERED_SDPA; False where this transformers cannot."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        return False
    AttentionInterface.register(REGISTERED_SDPA, sdpa_attention_forward)
    return True


def build_model(attention: str, device):
    """The token classifier with ``attention`` ("eager" or "sdpa") as its attention implementation where the
    installed transformers can run it, else its default; returns the model and the implementation it uses
    ("sdpa (registered)" for SDPA through REGISTERED_SDPA)."""
    from transformers import LayoutLMForTokenClassification

    with device:  # initialise the weights where they will live: much faster than on the CPU and a copy
        try:
            model = LayoutLMForTokenClassification._from_config(model_config(), attn_implementation=attention)
        except (ValueError, ImportError, TypeError):
            try:
                if attention != "sdpa" or not register_sdpa():
                    raise ValueError(f"no {attention} attention in this transformers")
                model = LayoutLMForTokenClassification._from_config(model_config(), attn_implementation=REGISTERED_SDPA)
            except (ValueError, ImportError, TypeError):
                model = LayoutLMForTokenClassification(model_config())  # the default, whatever it is
    model = model.float().train()  # float32 master weights: autocast makes the half-precision copies
    used = getattr(model.config, "_attn_implementation", None) or "eager"
    return model, "sdpa (registered)" if used == REGISTERED_SDPA else used


def count_parameters() -> dict:
    """Parameter counts of the model, built on the meta device (no memory, no initialisation)."""
    import torch

    model, _ = build_model("eager", torch.device("meta"))
    counts = {"total": 0, "embedding": 0, "pooler": 0}
    for name, parameter in model.named_parameters():
        counts["total"] += parameter.numel()
        if ".embeddings." in name:
            counts["embedding"] += parameter.numel()
        elif ".pooler." in name:
            counts["pooler"] += parameter.numel()
    counts["non_embedding"] = counts["total"] - counts["embedding"] - counts["pooler"]
    return counts


def training_flops_per_token(non_embedding_parameters: int) -> float:
    """6 x N + 12 x L x H x S: see the module docstring."""
    config = model_config()
    attention = 12 * config.num_hidden_layers * config.hidden_size * SEQUENCE_LENGTH
    return 6 * non_embedding_parameters + attention


def name_words(gpu_name: str) -> set[str]:
    """The words of a GPU name: "NVIDIA A100-SXM4-80GB" -> {"nvidia", "a100", "sxm4", "80gb"}."""
    return set(re.split(r"[^a-z0-9]+", gpu_name.lower()))


def peak_tflops(gpu_name: str) -> float | None:
    name = name_words(gpu_name)
    for words, tflops in PEAK_TFLOPS:
        if all(word in name for word in words):
            return tflops
    return None


def synthetic_batch(batch_size: int, device, seed: int = 0) -> dict:
    """A full window per sequence: random tokens and tags, boxes with x0 <= x1 and y0 <= y1 in 0..1000."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, SEQUENCE_LENGTH)
    xs = torch.randint(0, 1001, (*shape, 2), generator=generator).sort(dim=-1).values
    ys = torch.randint(0, 1001, (*shape, 2), generator=generator).sort(dim=-1).values
    batch = {
        "input_ids": torch.randint(0, model_config().vocab_size, shape, generator=generator),
        "bbox": torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "labels": torch.randint(0, NUM_LABELS, shape, generator=generator),
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}


# ------------------------------------------------------------------------------------------ measuring


def set_tf32(enabled: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device) -> None:
    """Drop what a finished or failed configuration left, so the next one starts from an empty GPU."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def attention_kernels(config: StepConfig):
    """The context in which the step's attention runs: cuDNN's kernel tried first, or PyTorch's own order."""
    import contextlib

    if config.attention != "sdpa" or config.kernels == "torch":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def remove_dropout(model, dropout: str) -> None:
    """Switch off the attention-probability dropout ("no attention dropout") or every dropout ("none")."""
    import torch

    for module in model.modules():
        if dropout in ("no attention dropout", "none") and hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.0
        if dropout == "none" and isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def run_training_steps(config: StepConfig, steps: int, warmup: int, device, profile: bool = False) -> dict:
    """Build the model and optimizer, run ``warmup`` then ``steps`` timed training steps; the timings, and with
    ``profile`` where the GPU time of a step goes (``kernel_breakdown``)."""
    import torch

    set_tf32(config.tf32)
    torch.manual_seed(0)
    model, attention_used = build_model(config.attention, device)
    remove_dropout(model, config.dropout)
    if config.fused_adamw:
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, foreach=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
    # fp16 needs loss scaling; a disabled scaler passes the loss and the step straight through
    if hasattr(torch.amp, "GradScaler"):
        scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    else:  # torch before 2.3
        scaler = torch.cuda.amp.GradScaler(enabled=config.precision == "fp16")
    forward = torch.compile(model, mode=config.compile_mode) if config.compile else model
    batch = synthetic_batch(config.batch_size, device)

    def step() -> torch.Tensor:
        if config.compile and "reduce-overhead" in (config.compile_mode or ""):
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the graphs may reuse their outputs
        # the backward pass runs the kernels the forward chose, outside autocast as PyTorch recommends
        with attention_kernels(config), torch.autocast(device.type, dtype=dtype):
            loss = forward(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    seconds = []
    loss = None
    for index in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        loss = step()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        if index == 0:
            print(f"    first step {seconds[0]:.2f} s", file=sys.stderr, flush=True)
    result = {
        "attention_used": attention_used,
        "step_seconds": seconds[warmup:],
        "first_step_seconds": seconds[0],
        "loss": float(loss.detach().float()) if loss is not None else None,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    if profile and (breakdown := kernel_breakdown(step, device)):
        result["kernel_breakdown"] = breakdown
    return result


# GPU kernels by what they do, matched in order against the lower-cased kernel name; the rest is "other".
KERNEL_KINDS = (
    ("attention", ("fmha", "flash", "attention", "sdpa", "cudnn_generated", "sm90_flash")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "matmul", "_mm_", "mm_plus")),
    ("optimizer", ("adam",)),
    ("embedding", ("embedding", "index", "scatter", "sort", "radix", "segment")),
    ("normalisation", ("layer_norm", "layernorm", "welford", "norm")),
    ("fused (triton)", ("triton",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "dropout", "fill", "copy", "reduce", "softmax", "gelu")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, words in KERNEL_KINDS:
        if any(word in lowered for word in words):
            return kind
    return "other"


def kernel_breakdown(step, device, steps: int = 3) -> dict | None:
    """GPU time per training step by kernel kind, and the costliest kernels, from torch.profiler; None on a CPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return None
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    milliseconds: dict[str, float] = {}
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            milliseconds[event.name] = milliseconds.get(event.name, 0.0) + event.device_time_total / 1000
    return summarise_kernels({name: total / steps for name, total in milliseconds.items()})


def summarise_kernels(milliseconds: dict[str, float], top: int = 10) -> dict:
    """Kernel times (ms per step, by kernel name) summed by kind, and the ``top`` costliest kernels."""
    kinds: dict[str, float] = {}
    for name, spent in milliseconds.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + spent
    costliest = sorted(milliseconds.items(), key=lambda item: -item[1])[:top]
    return {
        "gpu_ms_per_step": sum(milliseconds.values()),
        "kinds_ms": dict(sorted(kinds.items(), key=lambda item: -item[1])),
        "top_kernels_ms": [[name[:120], spent] for name, spent in costliest],
    }


def measure(
    config: StepConfig, steps: int, warmup: int, device, flops_per_token: float, peak: float | None,
    profile: bool = False,
) -> dict:  # fmt: skip
    """One row: the configuration, its status ("ok" or "OOM") and, when it ran, tokens/s, MFU and peak memory."""
    import torch

    row = {**asdict(config), "status": "ok"}
    release_memory(device)
    try:
        result = run_training_steps(config, steps, warmup, device, profile)
    except torch.cuda.OutOfMemoryError:
        result = None
        row["status"] = "OOM"
    # the exception, and the tensors its traceback held, are gone once the except clause has ended
    release_memory(device)
    if result is None:
        return row
    median_seconds = statistics.median(result["step_seconds"])
    tokens_per_second = config.batch_size * SEQUENCE_LENGTH / median_seconds
    row.update(result)
    row["median_step_seconds"] = median_seconds
    row["tokens_per_second"] = tokens_per_second
    row["achieved_tflops"] = flops_per_token * tokens_per_second / 1e12
    row["mfu"] = row["achieved_tflops"] / peak if peak else None
    if config.compile:
        # the first call compiles the forward and the backward graphs: its wall time less an ordinary step
        row["compile_seconds"] = result["first_step_seconds"] - median_seconds
    return row


def auto_batch_size(fits, start: int = 8, limit: int = 8192, granularity: int = 8) -> int:
    """The largest batch size for which ``fits(batch_size)`` holds: doubling from ``start`` until it fails (or
    ``limit``), then bisecting between the last that fitted and the first that failed, to a multiple of
    ``granularity``. 0 when even ``start`` does not fit. Assumes that fitting is monotonic in the batch size."""
    if not fits(start):
        return 0
    fitted, failed = start, None
    while fitted * 2 <= limit:
        if not fits(fitted * 2):
            failed = fitted * 2
            break
        fitted *= 2
    if failed is None:
        return fitted
    while failed - fitted > granularity:
        middle = (fitted + failed) // 2 // granularity * granularity
        if fits(middle):
            fitted = middle
        else:
            failed = middle
    return fitted


def compile_in_child(config: StepConfig, steps: int, warmup: int, timeout: float, profile: bool = False) -> dict:
    """Measure a torch.compile configuration in a child process, so that a compilation which runs past
    ``timeout`` seconds can be stopped (with its compile workers: the child leads its own process group)."""
    command = [sys.executable, "-m", __spec__.name if __spec__ else "benchmarks.gpu"]
    command += ["--worker", json.dumps(asdict(config)), "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--profile"] if profile else []
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {**asdict(config), "status": f"not measured: torch.compile ran past {timeout:.0f} s"}
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {**asdict(config), "status": f"error: the compile worker exited {child.returncode}"}


# ---------------------------------------------------------------------------------------- recommending


def fit_memory(rows: list[dict]) -> tuple[float, float] | None:
    """Least-squares peak memory (GiB) = fixed + per_sample x batch over the rows that ran; None below two sizes."""
    points = sorted({(row["batch_size"], row["peak_memory_gib"]) for row in rows if row.get("peak_memory_gib")})
    if len({batch for batch, _ in points}) < 2:
        return None
    mean_batch = statistics.fmean(batch for batch, _ in points)
    mean_memory = statistics.fmean(memory for _, memory in points)
    covariance = sum((batch - mean_batch) * (memory - mean_memory) for batch, memory in points)
    variance = sum((batch - mean_batch) ** 2 for batch, _ in points)
    per_sample = covariance / variance
    return mean_memory - per_sample * mean_batch, per_sample


def power_of_two_at_most(value: float) -> int:
    return 0 if value < 1 else 2 ** (int(value).bit_length() - 1)


def recommend_batch_sizes(rows: list[dict], gpu_name: str, gpu_memory_mib: float | None) -> list[dict]:
    """A batch size per instance type: the largest power of two whose peak memory stays under (1 - HEADROOM) of
    the GPU's memory. Measured on the instance type whose GPU this is (the largest power of two that ran
    within the bound); derived from the linear fit of peak memory on batch size for the others."""
    fit = fit_memory(rows)
    recommendations = []
    for instance, gpu, memory_mib in INSTANCE_GPUS:
        on_this_gpu = gpu.lower() in name_words(gpu_name)
        if on_this_gpu and gpu_memory_mib:
            memory_mib = gpu_memory_mib
        budget_gib = (1 - HEADROOM) * memory_mib / 1024
        entry = {"instance": instance, "gpu": gpu, "memory_gib": memory_mib / 1024, "budget_gib": budget_gib}
        ran = [
            row["batch_size"]
            for row in rows
            if row.get("peak_memory_gib") and row["peak_memory_gib"] <= budget_gib
            and power_of_two_at_most(row["batch_size"]) == row["batch_size"]
        ]  # fmt: skip
        if on_this_gpu and ran:
            entry.update(batch_size=max(ran), source="measured")
        elif fit:
            fixed, per_sample = fit
            entry.update(batch_size=power_of_two_at_most((budget_gib - fixed) / per_sample), source="derived")
        else:
            entry.update(batch_size=None, source="not measured")
        recommendations.append(entry)
    return recommendations


# ------------------------------------------------------------------------------------------- reporting


def _cell(value, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _row_cells(row: dict, baseline: dict | None = None) -> list[str]:
    cells = [
        _cell(row.get("tokens_per_second"), ",.0f"),
        _cell(row.get("median_step_seconds") and row["median_step_seconds"] * 1000, ".1f"),
        _cell(row.get("achieved_tflops"), ".0f"),
        _cell(row.get("mfu") and row["mfu"] * 100, ".1f"),
        _cell(row.get("peak_memory_gib"), ".2f"),
    ]
    if baseline is not None:
        speedup = None
        if row.get("tokens_per_second") and baseline.get("tokens_per_second"):
            speedup = row["tokens_per_second"] / baseline["tokens_per_second"]
        cells.append(_cell(speedup, ".2f") + ("x" if speedup else ""))
    return cells


def markdown(report: dict) -> str:
    parameters = report["parameters"]
    lines = [
        f"### GPU training throughput: layoutlm-base token classifier, sequence length {SEQUENCE_LENGTH}",
        "",
        f"{report['date']} on {report['gpu'] or 'no CUDA device'} ({_cell(report['gpu_memory_gib'], '.1f')} GiB), "
        f"torch {report['torch']}, transformers {report['transformers']}, CUDA {report['cuda']}, Python "
        f"{report['python']}. Peak dense bf16/fp16: {_cell(report['peak_tflops'], '.0f')} TFLOP/s.",
        "",
        f"Training FLOPs per token = 6 x {parameters['non_embedding'] / 1e6:.2f} M non-embedding parameters + "
        f"12 x layers x hidden x {SEQUENCE_LENGTH} = {report['flops_per_token'] / 1e6:.0f} MFLOP; "
        f"MFU = that x tokens/s / peak. Median of {report['steps']} timed steps after {report['warmup']} warm-up "
        f"steps; peak memory = max_memory_allocated (weights, gradients, AdamW state, activations).",
    ]
    header = "| tokens/s | step ms | TFLOP/s | MFU % | peak GiB |"
    rule = "|---|---|---|---|---|"

    attention_rows = report.get("attention_kernels") or []
    if attention_rows:
        batch = attention_rows[0]["batch_size"]
        title = f"#### Attention kernels alone (one layer, batch {batch}, bf16, dropout 0.1, forward + backward)"
        lines += ["", title, ""]
        lines += ["| kernel | padding mask | ms | TFLOP/s | status |", "|---|---|---|---|---|"]
        for row in attention_rows:
            cells = [row["kernel"], "yes" if row["masked"] else "no", _cell(row.get("milliseconds"), ".2f")]
            lines.append("| " + " | ".join([*cells, _cell(row.get("tflops"), ".0f"), row["status"]]) + " |")

    optimisations = [row for row in report["rows"] if row["stage"] == "optimisation"]
    if optimisations:
        lines += ["", "#### Optimisations (bf16, TF32 on)", ""]
        lines += ["| batch | attention (used) | kernel order | optimizer | " + header[2:] + " vs baseline |"]
        lines += ["|---|---|---|---|" + rule[1:] + "---|"]
        for row in optimisations:
            # the baseline is the row with neither optimisation at the same batch size
            baseline = next(
                (b for b in optimisations if b["batch_size"] == row["batch_size"] and b["attention"] == "eager"
                 and not b["fused_adamw"]),
                None,
            )  # fmt: skip
            attention = f"{row['attention']} ({row.get('attention_used', '-')})"
            order = "cuDNN first" if row.get("kernels") == "cudnn-first" else "PyTorch's"
            order = "-" if row["attention"] == "eager" else order
            cells = [str(row["batch_size"]), attention, order, "fused" if row["fused_adamw"] else "foreach"]
            cells += _row_cells(row, baseline) if row["status"] == "ok" else [row["status"]] + [""] * 5
            lines.append("| " + " | ".join(cells) + " |")
        chosen = report.get("recommended_setting") or "not chosen yet"
        lines += ["", f"Recommended setting (fastest without compile): {chosen}."]

    sweep = [row for row in report["rows"] if row["stage"] == "sweep"]
    lines += ["", f"#### Sweep ({report.get('recommended_setting') or 'not measured'})", ""]
    lines += ["| precision | TF32 | batch | " + header[2:] + " status |", "|---|---|---|" + rule[1:] + "---|"]
    for row in sweep:
        cells = [row["precision"], "on" if row["tf32"] else "off", str(row["batch_size"]), *_row_cells(row)]
        lines.append("| " + " | ".join([*cells, row["status"]]) + " |")

    auto = report.get("auto_batch_size")
    if auto:
        lines += ["", "#### auto_batch_size (bf16, TF32 on, recommended setting)", ""]
        probes = ", ".join(f"{probe['batch_size']} {probe['status']}" for probe in auto["probes"])
        lines += [f"Largest batch that fits: **{auto['batch_size']}** (probes, 2 steps each: {probes})."]
        measured = auto.get("row")
        if measured and measured["status"] == "ok":
            lines += ["", "| batch | " + header[2:], "|---" + rule]
            lines.append("| " + " | ".join([str(measured["batch_size"]), *_row_cells(measured)]) + " |")

    compiled = [row for row in report["rows"] if row["stage"] == "compile"]
    if compiled:
        lines += ["", "#### torch.compile (bf16, TF32 on, recommended setting)", ""]
        lines += ["| batch | mode | dropout | " + header[2:] + " vs eager mode | compile s | status |"]
        lines += ["|---|---|---" + rule + "---|---|---|"]
        for row in compiled:
            baseline = next((b for b in sweep if b["batch_size"] == row["batch_size"] and b["precision"] == "bf16"
                             and b["tf32"]), None)  # fmt: skip
            cells = [str(row["batch_size"]), row.get("compile_mode") or "default", row.get("dropout", "model")]
            cells += _row_cells(row, baseline or {})
            cells += [_cell(row.get("compile_seconds"), ".0f")]
            lines.append("| " + " | ".join([*cells, row["status"]]) + " |")

    profiled = [row for row in report["rows"] if row.get("kernel_breakdown")]
    if profiled:
        lines += ["", "#### Where a step's GPU time goes (torch.profiler, 3 steps, ms per step)", ""]
        kinds = sorted({kind for row in profiled for kind in row["kernel_breakdown"]["kinds_ms"]})
        lines += ["| step | step ms | GPU busy ms | " + " | ".join(kinds) + " |"]
        lines += ["|---|---|---|" + "---|" * len(kinds)]
        for row in profiled:
            breakdown = row["kernel_breakdown"]
            mode = f"compiled ({row.get('compile_mode') or 'default'})" if row.get("compile") else "eager mode"
            mode += "" if row.get("dropout", "model") == "model" else f", dropout: {row['dropout']}"
            cells = [f"batch {row['batch_size']}, {mode}", _cell(row.get("median_step_seconds", 0) * 1000, ".1f")]
            cells += [_cell(breakdown["gpu_ms_per_step"], ".1f")]
            cells += [_cell(breakdown["kinds_ms"].get(kind), ".1f") for kind in kinds]
            lines.append("| " + " | ".join(cells) + " |")
        for row in profiled:
            top = "; ".join(f"{name[:60]} {ms:.1f}" for name, ms in row["kernel_breakdown"]["top_kernels_ms"][:6])
            compiled_step = " compiled" if row.get("compile") else ""
            lines += ["", f"Costliest kernels, batch {row['batch_size']}{compiled_step}: {top}."]

    lines += ["", f"#### Recommended batch size per instance type ({int(HEADROOM * 100)}% memory headroom)", ""]
    fit = report.get("memory_fit")
    if fit:
        lines += [
            f"Peak memory ~= {fit['fixed_gib']:.2f} GiB + {fit['per_sample_gib'] * 1024:.0f} MiB x batch "
            "(least squares over the bf16 rows that ran with the recommended setting).",
            "",
        ]
    lines += ["| instance | GPU | memory GiB | budget GiB | batch | source |", "|---|---|---|---|---|---|"]
    for entry in report.get("recommendations") or []:
        cells = [entry["instance"], entry["gpu"], f"{entry['memory_gib']:.1f}", f"{entry['budget_gib']:.1f}"]
        cells += [_cell(entry["batch_size"], "d"), entry["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_benchmark.md").write_text(markdown(report) + "\n")


# ------------------------------------------------------------------------------------------------ main


def environment() -> dict:
    # timezone.utc rather than datetime.UTC: the GPU machine's Python may be older than 3.11
    now = datetime.now(timezone.utc)  # noqa: UP017
    report = {"date": now.isoformat(timespec="seconds"), "python": platform.python_version()}
    for module in ("torch", "transformers"):
        try:
            report[module] = __import__(module).__version__
        except ImportError:
            report[module] = None
    report.update(gpu=None, gpu_memory_gib=None, cuda=None, peak_tflops=None)
    try:
        import torch
    except ImportError:
        return report
    report["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        report.update(gpu=properties.name, gpu_memory_gib=properties.total_memory / 2**30)
        report["peak_tflops"] = peak_tflops(properties.name)
    return report


def not_measured(args, reason: str) -> list[dict]:
    configs = [
        StepConfig(batch_size, precision, tf32)
        for precision in args.precisions
        for tf32 in (True, False)
        for batch_size in args.batch_sizes
    ]
    return [{**asdict(config), "stage": "sweep", "status": f"not measured: {reason}"} for config in configs]


ATTENTION_CASES = (  # (kernel, with LayoutLM's additive padding mask)
    ("math", True),
    ("efficient", True),
    ("flash", True),
    ("cudnn", True),
    ("efficient", False),
    ("flash", False),
    ("cudnn", False),
)


def attention_kernel_rows(batch_size: int, steps: int, warmup: int, device) -> list[dict]:
    """Forward and backward of one layer's attention as LayoutLM calls it in training (bf16, heads x 64, the
    query/key/value layout of its projections, dropout 0.1, the additive mask or none), each kernel forced
    alone. TFLOP/s counts 3 x the forward's 4 x S^2 x hidden per sequence, as the MFU formula does."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = model_config()
    heads, hidden = config.num_attention_heads, config.hidden_size
    flops = 3 * 4 * batch_size * SEQUENCE_LENGTH**2 * hidden
    backends = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}  # fmt: skip
    rows = []
    for kernel, masked in ATTENTION_CASES:
        row = {"kernel": kernel, "masked": masked, "batch_size": batch_size, "status": "ok"}
        release_memory(device)
        reasons: list = []
        try:
            # (batch, sequence, heads, 64) viewed as (batch, heads, sequence, 64): the layout the projections give
            q, k, v = (
                torch.randn(batch_size, SEQUENCE_LENGTH, heads, hidden // heads, device=device, dtype=torch.bfloat16)
                .transpose(1, 2).requires_grad_()
                for _ in range(3)
            )  # fmt: skip
            mask = torch.zeros(batch_size, 1, 1, SEQUENCE_LENGTH, device=device, dtype=torch.bfloat16)
            mask[:, :, :, -16:] = torch.finfo(torch.bfloat16).min  # some padding, as a real batch has
            seconds = []
            for index in range(warmup + steps):
                synchronize(device)
                started = time.perf_counter()
                with sdpa_kernel([backends[kernel]]), warnings.catch_warnings(record=True) as reasons:
                    out = torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, attn_mask=mask if masked else None, dropout_p=0.1
                    )
                out.backward(torch.ones_like(out))
                synchronize(device)
                if index >= warmup:
                    seconds.append(time.perf_counter() - started)
                q.grad = k.grad = v.grad = None
            median = statistics.median(seconds)
            row.update(milliseconds=median * 1000, tflops=flops / median / 1e12)
        except RuntimeError as error:  # a kernel that refuses the call warns why, then raises
            why = [str(reason.message).split(" (Triggered")[0] for reason in reasons] or [str(error).splitlines()[0]]
            row["status"] = "refused: " + "; ".join(why)[:160]
        rows.append(row)
        print(f"  attention {kernel} masked={masked}: {row.get('milliseconds')} {row['status']}", flush=True)
    release_memory(device)
    return rows


def run_benchmark(args, report: dict, device) -> None:
    """Stages 1 to 5 of the module docstring, writing the report after every row (a timeout keeps the rest)."""
    import torch

    started = time.monotonic()
    flops, peak = report["flops_per_token"], report["peak_tflops"]
    rows = report["rows"]

    def record(row: dict, stage: str) -> dict:
        row["stage"] = stage
        rows.append(row)
        summary = {key: row.get(key) for key in ("batch_size", "precision", "tf32", "status", "tokens_per_second")}
        mfu = row.get("mfu")
        print(f"  {stage}: {summary} mfu={mfu and round(mfu * 100, 1)} {row.get('peak_memory_gib')}", flush=True)
        write_report(report, args.out)
        return row

    if args.compile_only:  # stage 4 alone, with the setting stage 1 chose before (SDPA, fused AdamW)
        best = StepConfig(8)
        report["recommended_setting"] = best.setting()
        run_compile_stage(args, report, best, record, started, device)
        return

    # 0. the attention kernels alone
    report["attention_kernels"] = attention_kernel_rows(args.attention_batch_size, args.steps, args.warmup, device)
    write_report(report, args.out)

    # 1. optimisations: everything off is the baseline (eager attention, foreach AdamW), then SDPA in PyTorch's
    # kernel order and with cuDNN's kernel first, each with either optimizer
    settings = [StepConfig(8, attention="eager", kernels="torch", fused_adamw=fused) for fused in (False, True)]
    settings += [
        StepConfig(8, attention="sdpa", kernels=kernels, fused_adamw=fused)
        for kernels in ("torch", "cudnn-first")
        for fused in (False, True)
    ]
    candidates: dict[StepConfig, list[dict]] = {setting: [] for setting in settings}
    for batch_size in args.optimisation_batch_sizes:
        for setting in settings:
            config = replace(setting, batch_size=batch_size)
            row = record(measure(config, args.steps, args.warmup, device, flops, peak), "optimisation")
            candidates[setting].append(row)

    def mean_speed(setting_rows: list[dict]) -> float:
        speeds = [row.get("tokens_per_second") or 0.0 for row in setting_rows]
        return statistics.fmean(speeds) if speeds else 0.0

    best = max(settings, key=lambda setting: mean_speed(candidates[setting]))
    report["recommended_setting"] = best.setting()

    # 2. the sweep
    for precision in args.precisions:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            for batch_size in args.batch_sizes:
                for tf32 in (True, False):
                    unsupported = {**asdict(replace(best, batch_size=batch_size, tf32=tf32, precision=precision))}
                    record({**unsupported, "status": "not measured: no bf16 on this GPU"}, "sweep")
            continue
        for tf32 in (True, False):
            for batch_size in args.batch_sizes:
                config = replace(best, batch_size=batch_size, precision=precision, tf32=tf32)
                # where the time of the largest bf16 step goes
                profile = precision == "bf16" and tf32 and batch_size == max(args.batch_sizes)
                record(measure(config, args.steps, args.warmup, device, flops, peak, profile), "sweep")

    # 3. auto_batch_size, with a short run per probe (2 steps: AdamW allocates its state in the first)
    probes = []

    def fits(batch_size: int) -> bool:
        probe = measure(replace(best, batch_size=batch_size), 1, 1, device, flops, peak)
        probes.append({key: probe.get(key) for key in ("batch_size", "status", "peak_memory_gib")})
        print(f"  auto_batch_size probe {batch_size}: {probe['status']}", flush=True)
        return probe["status"] == "ok"

    largest = auto_batch_size(fits, limit=args.auto_batch_limit)
    report["auto_batch_size"] = {"batch_size": largest, "probes": probes}
    if largest:
        report["auto_batch_size"]["row"] = record(
            measure(replace(best, batch_size=largest), args.steps, args.warmup, device, flops, peak), "auto-batch"
        )

    # 5 before 4: the recommendation needs no compile, and a compile that runs out the clock must not lose it
    memory_rows = [
        row for row in rows if row["stage"] in ("sweep", "auto-batch") and row["precision"] == "bf16" and row["tf32"]
    ]
    memory_rows += [probe for probe in probes if probe["status"] == "ok"]
    fit = fit_memory(memory_rows)
    report["memory_fit"] = fit and {"fixed_gib": fit[0], "per_sample_gib": fit[1]}
    gpu_memory_mib = report["gpu_memory_gib"] and report["gpu_memory_gib"] * 1024
    report["recommendations"] = recommend_batch_sizes(memory_rows, report["gpu"] or "", gpu_memory_mib)
    write_report(report, args.out)

    run_compile_stage(args, report, best, record, started, device)


def run_compile_stage(args, report: dict, best: StepConfig, record, started: float, device) -> None:
    """Stage 4, torch.compile, each row in a child process with what is left of the time budget: the default
    mode at each of --compile-batch-sizes, then at the largest each of --compile-modes and --compile-dropouts."""
    if args.no_compile:
        return
    largest = max(args.compile_batch_sizes)
    compiles = [replace(best, batch_size=batch_size, compile=True) for batch_size in args.compile_batch_sizes]
    compiles += [replace(best, batch_size=largest, compile=True, compile_mode=mode) for mode in args.compile_modes]
    compiles += [replace(best, batch_size=largest, compile=True, dropout=drop) for drop in args.compile_dropouts]
    for config in compiles:
        left = args.time_budget - (time.monotonic() - started)
        timeout = min(args.compile_timeout, left)
        if timeout < 30:
            record({**asdict(config), "status": "not measured: out of time"}, "compile")
            continue
        release_memory(device)
        record(compile_in_child(config, args.steps, args.warmup, timeout, profile=True), "compile")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"timed steps (at least {MIN_STEPS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed steps before them")
    default_out = Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu-benchmark")
    out_help = "folder for gpu_benchmark.json and .md (default: $OUT, else /tmp/gpu-benchmark)"
    parser.add_argument("--out", type=Path, default=default_out, help=out_help)
    parser.add_argument("--optimisation-batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--attention-batch-size", type=int, default=64, help="batch of the attention-kernel rows")
    parser.add_argument("--auto-batch-limit", type=int, default=8192, help="the largest batch auto_batch_size tries")
    parser.add_argument("--compile-batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--compile-modes", nargs="*", default=["max-autotune-no-cudagraphs"],
                        help="torch.compile modes also measured, at the largest compile batch")  # fmt: skip
    parser.add_argument("--compile-timeout", type=float, default=240.0, help="seconds for one torch.compile row")
    parser.add_argument("--compile-dropouts", nargs="*", default=[], choices=["no attention dropout", "none"],
                        help="dropout settings also measured compiled, to show what the dropout costs")  # fmt: skip
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-only", action="store_true", help="stage 4 alone, with SDPA and fused AdamW")
    parser.add_argument("--time-budget", type=float, default=540.0,
                        help="seconds after which torch.compile is not started")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a StepConfig as JSON: one row, in this process
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # the worker's kernel breakdown
    args = parser.parse_args(argv)
    args.steps = max(args.steps, MIN_STEPS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = environment()
    report.update(steps=args.steps, warmup=args.warmup, sequence_length=SEQUENCE_LENGTH, rows=[])
    report.update(recommended_setting=None, recommendations=[], memory_fit=None)

    if args.worker:
        import torch

        parameters = count_parameters()
        flops = training_flops_per_token(parameters["non_embedding"])
        config = StepConfig(**json.loads(args.worker))
        row = measure(config, args.steps, args.warmup, torch.device("cuda"), flops, report["peak_tflops"], args.profile)
        print(json.dumps(row))
        return 0

    if report["torch"] is None or report["transformers"] is None:
        reason = "torch and transformers are needed"
        report.update(parameters={"non_embedding": 0}, flops_per_token=0.0, rows=not_measured(args, reason))
    else:
        report["parameters"] = count_parameters()
        report["flops_per_token"] = training_flops_per_token(report["parameters"]["non_embedding"])
        import torch

        if report["gpu"] is None:
            report["rows"] = not_measured(args, "no CUDA device")
        else:
            print(f"{report['gpu']}: torch {report['torch']}, transformers {report['transformers']}", flush=True)
            run_benchmark(args, report, torch.device("cuda"))
    if not report["recommendations"]:
        report["recommendations"] = [
            {"instance": instance, "gpu": gpu, "memory_gib": mib / 1024, "budget_gib": (1 - HEADROOM) * mib / 1024,
             "batch_size": None, "source": "not measured"}
            for instance, gpu, mib in INSTANCE_GPUS
        ]  # fmt: skip
    write_report(report, args.out)
    print(markdown(report))
    print(f"\nwritten: {args.out / 'gpu_benchmark.json'}, {args.out / 'gpu_benchmark.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
