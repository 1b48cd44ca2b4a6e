"""How many windows a training step holds: a batch that does not fit the device's memory trains as the same
optimizer batch in micro-batches (gradient accumulation), and a model that does not fit at all is refused
before training, saying what it needs and what there is.

The estimate errs high, so that the plan errs towards smaller micro-batches: those cost some speed, an
out-of-memory kill costs the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from receipt_pipeline.core.errors import ExplainedError

# of what the device reports free, the share a training step may plan on: the allocator's fragmentation,
# the data loader, evaluation's logits and everything else the process holds need the rest
HEADROOM = 0.6
# fp32 weights, their gradients and AdamW's two moments
BYTES_PER_PARAMETER = 16
# the published per-layer count is for a fused GPU implementation: on this machine's CPU a step of 4 full
# windows of the compact model took 1.51 GB against 1.46 GB estimated without it (core/test_memory.py)
ACTIVATION_MARGIN = 1.5
GIB = 2**30


class BatchMemoryError(ExplainedError):
    pass


@dataclass(frozen=True)
class MemoryPlan:
    per_device_batch_size: int
    gradient_accumulation_steps: int
    windows_that_fit: int
    bytes_per_window: int
    fixed_bytes: int
    available_bytes: int

    def at_most(self, per_device_batch_size: int) -> MemoryPlan:
        """This plan with a micro-batch no larger than ``per_device_batch_size`` (a divisor of this plan's
        optimizer batch, as every plan's is), keeping the optimizer's batch."""
        if per_device_batch_size >= self.per_device_batch_size:
            return self
        windows = self.per_device_batch_size * self.gradient_accumulation_steps
        return replace(
            self,
            per_device_batch_size=per_device_batch_size,
            gradient_accumulation_steps=windows // per_device_batch_size,
        )

    def describe(self, requested: int, accumulation: int) -> str:
        if (self.per_device_batch_size, self.gradient_accumulation_steps) == (requested, accumulation):
            return f"batch {requested} x {accumulation} fits ({self.windows_that_fit} windows would)"
        return (
            f"batch {requested} x {accumulation} runs as {self.per_device_batch_size} x "
            f"{self.gradient_accumulation_steps} (the same {requested * accumulation} windows an optimizer step): "
            f"a window needs about {self.bytes_per_window / GIB:.2f} GiB, the model and its optimizer state "
            f"{self.fixed_bytes / GIB:.2f} GiB, and {self.available_bytes / GIB:.1f} GiB are free"
        )


def activation_bytes_per_window(layers: int, hidden: int, heads: int, tokens: int, bytes_per_value: int = 4) -> int:
    """Activations a transformer keeps for the backward pass, per window: per layer s*h*(34 + 5*a*s/h) bytes
    at 16 bits (Korthikanti et al. 2022, "Reducing Activation Recomputation"), scaled to ``bytes_per_value``."""
    per_layer_16_bit = tokens * hidden * (34 + 5 * heads * tokens / hidden)
    return int(layers * per_layer_16_bit * bytes_per_value / 2 * ACTIVATION_MARGIN)


def available_bytes(cuda: bool) -> int:
    """Free memory of the device: CUDA's free bytes, or the host's available memory within its cgroup limit."""
    if cuda:
        import torch

        return int(torch.cuda.mem_get_info()[0])
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def _cgroup_room() -> int | None:
    limit, usage = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        maximum = limit.read_text().strip()
        if maximum == "max":
            return None
        return int(maximum) - int(usage.read_text())
    except (OSError, ValueError):
        return None


def plan_batch(
    requested: int, accumulation: int, bytes_per_window: int, fixed_bytes: int, free_bytes: int
) -> MemoryPlan:
    """The largest micro-batch that divides ``requested`` and fits, with the accumulation that keeps the
    optimizer's batch; :class:`BatchMemoryError` when not even one window fits beside the model."""
    budget = free_bytes * HEADROOM - fixed_bytes
    fits = int(budget // bytes_per_window) if budget > 0 else 0
    if fits < 1:
        raise BatchMemoryError(
            f"a training step needs about {(fixed_bytes + bytes_per_window) / GIB:.1f} GiB (the model, its "
            f"gradients and optimizer state {fixed_bytes / GIB:.1f} GiB, one window {bytes_per_window / GIB:.2f} "
            f"GiB) and plans on {HEADROOM:.0%} of what is free, {free_bytes / GIB:.1f} GiB: use a smaller base "
            "model, shorter windows, or a device with more memory"
        )
    splits = next(k for k in range(math.ceil(requested / fits), requested + 1) if requested % k == 0)
    return MemoryPlan(
        per_device_batch_size=requested // splits,
        gradient_accumulation_steps=accumulation * splits,
        windows_that_fit=fits,
        bytes_per_window=bytes_per_window,
        fixed_bytes=fixed_bytes,
        available_bytes=free_bytes,
    )


def plan_for_model(model, requested: int, accumulation: int, tokens: int, cuda: bool) -> MemoryPlan:
    """:func:`plan_batch` for a Hugging Face model and windows of ``tokens``; half-precision activations on CUDA."""
    config = model.config
    per_window = activation_bytes_per_window(
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads, tokens, 2 if cuda else 4
    )
    fixed = sum(parameter.numel() for parameter in model.parameters()) * BYTES_PER_PARAMETER
    return plan_batch(requested, accumulation, per_window, fixed, available_bytes(cuda))
