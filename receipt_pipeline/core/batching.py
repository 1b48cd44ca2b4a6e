"""How windows are batched for training: the collator that pads a batch, the token-weighted loss, and the
length-bucket sampler that orders an epoch; and the padding efficiency that sampler gives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.windows import IGNORE_INDEX


class WindowCollator:
    """Pads ``input_ids``, ``bbox``, ``attention_mask`` and ``labels`` to the longest window in the batch."""

    def __init__(self, pad_token_id: int, multiple_of: int | None = None, pad_to_length: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of
        self.pad_to_length = pad_to_length

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_length:
            longest = max(longest, self.pad_to_length)
        elif self.multiple_of:
            longest = -(-longest // self.multiple_of) * self.multiple_of
        batch = len(features)
        input_ids = np.full((batch, longest), self.pad_token_id, dtype=np.int64)
        bbox = np.zeros((batch, longest, 4), dtype=np.int64)
        attention_mask = np.zeros((batch, longest), dtype=np.int64)
        labels = np.full((batch, longest), IGNORE_INDEX, dtype=np.int64)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = feature["input_ids"]
            bbox[row, :n] = feature["bbox"]
            attention_mask[row, :n] = 1
            labels[row, :n] = feature["labels"]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "bbox": torch.from_numpy(bbox),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
        }


class TokenLoss:
    """Cross-entropy summed over the labelled tokens of a step and divided by their count on every process
    and micro-batch of that step (the Trainer's ``num_items_in_batch``): each token weighs the same, so
    two processes of 2 windows train exactly as one of 4, and accumulation as a larger batch.

    LayoutLM's own loss is a per-batch mean, yet its ``forward`` takes ``**kwargs``, so the Trainer takes
    it for one normalised over the whole step: it stops dividing by the accumulation steps and multiplies
    by the number of processes, which scales the gradients (transformers 5.23).
    """

    def __init__(self, label_smoothing: float = 0.0, tag_weights: np.ndarray | None = None) -> None:
        self.label_smoothing = label_smoothing
        self.tag_weights = tag_weights
        self._weight_tensor = None

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch
        import torch.nn.functional as F

        logits = outputs["logits"]
        if self.tag_weights is not None and self._weight_tensor is None:
            self._weight_tensor = torch.as_tensor(self.tag_weights, dtype=torch.float32, device=logits.device)
        total = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            labels.reshape(-1),
            weight=self._weight_tensor,
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        count = num_items_in_batch if num_items_in_batch is not None else labels.ne(IGNORE_INDEX).sum()
        return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def tag_weights(labels: np.ndarray, tags: Sequence[str], power: float, cap: float) -> np.ndarray | None:
    """Each tag's loss weight from the train windows' ``labels``: (O tokens / its label's tokens) ** ``power``,
    between 1 and ``cap``, the same for a label's B- and I- tags; None for ``power`` 0. A label with no token
    gets ``cap`` (it never meets a target).

    Why: a receipt has one total among several amounts, so with every token weighing the same a short CPU run
    learns the header's company and address and never tags a total (BENCHMARKS.md, sections 5 and 8). Why per
    label: B- tags by their own, rarer, count would weigh starting a span above continuing one.
    """
    if not power:
        return None
    counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=len(tags)).astype(np.float64)
    _, label_of_tag = np.unique([tag.split("-", 1)[-1] for tag in tags], return_inverse=True)
    label_counts = np.bincount(label_of_tag, weights=counts)[label_of_tag]
    outside = counts[list(tags).index(OUTSIDE)]
    ratio = np.divide(outside, label_counts, out=np.full(len(tags), np.inf), where=label_counts > 0)
    return np.clip(ratio**power, 1.0, cap).astype(np.float32)


def with_label_weights(
    weights: np.ndarray | None, tags: Sequence[str], label_weights: dict[str, float] | None
) -> np.ndarray | None:
    """``weights`` (:func:`tag_weights`; None: every tag 1) with each label of ``label_weights`` weighing what
    it says, on its B- and I- tags alike; the other tags keep theirs. None where both are unset."""
    if not label_weights:
        return weights
    chosen = np.ones(len(tags), dtype=np.float32) if weights is None else np.array(weights, dtype=np.float32)
    for i, tag in enumerate(tags):
        label = tag.split("-", 1)[-1] if tag != OUTSIDE else None
        if label in label_weights:
            chosen[i] = label_weights[label]
    return chosen


class LengthBucketSampler:
    """An epoch's windows sorted by length (ties broken at random) and cut into batches of similar length,
    the batches in a random order, but for two: the batch of the longest windows comes first, so that an
    out-of-memory shows at the first step, and a short remainder of the shortest comes last.

    The order is drawn from ``(seed, epoch)`` alone, and the Trainer calls :meth:`set_epoch`: a run resumed
    mid-epoch skips into the very batches an uninterrupted run sees. (The Trainer's LengthGroupedSampler
    draws from the global generator, whose state on resume differs.) Sorting the whole epoch also pads less
    than its groups of ``4 x batch`` windows: BENCHMARKS.md, "Training throughput".
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        tie_breaks = torch.rand(len(self.lengths), generator=generator).tolist()
        # longest first, so that a short remainder holds the shortest windows and can go last: the
        # DataLoader cuts this stream into batches again, and only a last short batch keeps them aligned
        order = sorted(range(len(self.lengths)), key=lambda i: (-self.lengths[i], tie_breaks[i]))
        full = len(order) - len(order) % self.batch_size
        batches = [order[start : start + self.batch_size] for start in range(0, full, self.batch_size)]
        rest = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist() if i > 0]
        return [*batches[:1], *rest, *([order[full:]] if full < len(order) else [])]

    def __iter__(self):
        for batch in self.batches():
            yield from batch


def padding_efficiency(
    lengths: Sequence[int], batch_size: int, max_length: int = 512, seed: int = 42, epoch: int = 0
) -> dict[str, float]:
    """Share of real tokens in the batches training feeds the model: the :class:`LengthBucketSampler`'s batches
    of an epoch, each padded by the :class:`WindowCollator` to its longest window, against padding every window
    to ``max_length``."""
    lengths = [int(n) for n in lengths]
    if not lengths:
        return {"length_buckets": 0.0, "padded_to_max": 0.0}
    sampler = LengthBucketSampler(lengths, batch_size, seed)
    sampler.set_epoch(epoch)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in sampler.batches())
    real = sum(lengths)
    return {"length_buckets": real / padded, "padded_to_max": real / (len(lengths) * max_length)}
