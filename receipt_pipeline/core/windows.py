"""Receipts to LayoutLM windows: sub-tokens with their word's box, tags on first sub-tokens, 512-token
sliding windows that overlap and never cut a word, stored unpadded in safetensors shards.

A shard holds, for its windows laid end to end: ``input_ids`` (int32), ``bbox`` (int16, n x 4),
``labels`` (int16, -100 where no loss is taken), ``word_index`` (int32, the token's word in its
receipt, -1 on special tokens), ``offsets`` (int64, window starts, one more than windows),
``window_receipt`` (int32, the window's receipt within the shard) and ``receipt_words`` (int32);
the shard's header metadata lists its receipt keys. Padding is the collator's job at training time.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from safetensors.numpy import save as save_safetensors

from receipt_pipeline.core import storage
from receipt_pipeline.core.bio import BOX_SCALE, SPLITS, tag_names
from receipt_pipeline.core.errors import ExplainedError

FORMAT = 1
IGNORE_INDEX = -100
CLS_BOX = (0, 0, 0, 0)
SEP_BOX = (BOX_SCALE, BOX_SCALE, BOX_SCALE, BOX_SCALE)


class WindowError(ExplainedError, ValueError):
    """The windows cannot be built or loaded; the message names the receipt, shard or setting at fault."""


@dataclass(frozen=True)
class WindowOptions:
    max_length: int = 512
    stride: int = 128
    batch_receipts: int = 256  # receipts per tokenizer call
    shard_windows: int = 4096

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise WindowError(f"max_length must be at least 8, got {self.max_length}")
        if not 0 <= self.stride < self.span:
            raise WindowError(f"stride must be in [0, max_length - 2 = {self.span}), got {self.stride}")

    @property
    def span(self) -> int:
        """Content tokens per window: max_length less [CLS] and [SEP]."""
        return self.max_length - 2


@dataclass
class Window:
    receipt: str
    receipt_words: int
    input_ids: np.ndarray
    bbox: np.ndarray
    labels: np.ndarray
    word_index: np.ndarray


@dataclass
class WindowStats:
    windows: int = 0
    tokens: int = 0
    receipts: int = 0
    words: int = 0
    words_cut: int = 0  # words whose sub-tokens a window boundary split; 0 unless a word outgrows a window
    words_replaced_by_unk: int = 0  # empty words and words the tokenizer drops entirely
    windows_per_receipt: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)

    def add(self, windows: Sequence[Window]) -> None:
        self.windows += len(windows)
        for window in windows:
            self.tokens += len(window.input_ids)
            self.lengths.append(len(window.input_ids))


# ------------------------------------------------------------------------------------------ windowing


def window_bounds(word_starts: np.ndarray, n_tokens: int, span: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges of the windows over one receipt: each at most ``span`` long, starting and ending on
    word boundaries, the next one starting on the first word boundary ``stride`` tokens before the end."""
    if n_tokens <= span:
        return [(0, n_tokens)]
    boundaries = np.r_[word_starts, n_tokens]
    bounds = []
    start = 0
    while True:
        limit = start + span
        if limit >= n_tokens:
            bounds.append((start, n_tokens))
            return bounds
        end = int(boundaries[np.searchsorted(boundaries, limit, side="right") - 1])
        if end <= start:
            end = limit  # a single word longer than a window: it has to be cut
        bounds.append((start, end))
        following = int(boundaries[np.searchsorted(boundaries, end - stride, side="left")])
        if following <= start:
            following = int(boundaries[np.searchsorted(boundaries, start, side="right")])
        start = min(following, end)


def tokenize_receipts(
    tokenizer,
    words: Sequence[Sequence[str]],
    boxes: Sequence[np.ndarray],
    tags: Sequence[Sequence[str]],
    keys: Sequence[str],
    tag_ids: dict[str, int],
    options: WindowOptions,
    stats: WindowStats | None = None,
) -> list[Window]:
    """Windows of a batch of receipts, tokenised in one call of the fast tokenizer."""
    stats = stats if stats is not None else WindowStats()
    unk = tokenizer.unk_token
    cleaned = [[text.strip() or unk for text in receipt] for receipt in words]
    stats.words_replaced_by_unk += sum(not text.strip() for receipt in words for text in receipt)
    encoded = tokenizer(
        cleaned, is_split_into_words=True, add_special_tokens=False, return_attention_mask=False,
        return_token_type_ids=False, verbose=False,  # long receipts are what the windows are for
    )  # fmt: skip
    windows: list[Window] = []
    for index, receipt in enumerate(cleaned):
        ids = np.asarray(encoded["input_ids"][index], dtype=np.int32)
        word_of = np.asarray(encoded.word_ids(index), dtype=np.int64)
        missing = np.flatnonzero(np.bincount(word_of, minlength=len(receipt)) == 0) if len(receipt) else []
        if len(missing):
            # a word the normaliser erases (control or zero-width characters) still needs a token, or
            # its prediction could not be merged back
            stats.words_replaced_by_unk += len(missing)
            erased = set(missing.tolist())
            receipt = [unk if i in erased else text for i, text in enumerate(receipt)]
            again = tokenizer(receipt, is_split_into_words=True, add_special_tokens=False, verbose=False)
            ids = np.asarray(again["input_ids"], dtype=np.int32)
            word_of = np.asarray(again.word_ids(), dtype=np.int64)
        try:
            word_tags = np.fromiter((tag_ids[tag] for tag in tags[index]), dtype=np.int16, count=len(receipt))
        except KeyError as error:
            raise WindowError(f"receipt {keys[index]}: tag {error.args[0]!r} is not in the label list") from None
        windows.extend(
            _receipt_windows(keys[index], ids, word_of, np.asarray(boxes[index]), word_tags, tokenizer, options, stats)
        )
    stats.receipts += len(cleaned)
    stats.words += sum(len(receipt) for receipt in cleaned)
    return windows


def _receipt_windows(key, ids, word_of, boxes, word_tags, tokenizer, options, stats) -> list[Window]:
    n_words = len(word_tags)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = word_of[1:] != word_of[:-1]
    bounds = window_bounds(np.flatnonzero(first), len(ids), options.span, options.stride)
    stats.windows_per_receipt[len(bounds)] += 1
    cut = set()
    result = []
    for start, end in bounds:
        if start > 0 and not first[start]:
            cut.add(int(word_of[start]))
        if end < len(ids) and not first[end]:
            cut.add(int(word_of[end]))
        content_words = word_of[start:end]
        length = end - start + 2
        input_ids = np.empty(length, dtype=np.int32)
        input_ids[0], input_ids[1:-1], input_ids[-1] = tokenizer.cls_token_id, ids[start:end], tokenizer.sep_token_id
        bbox = np.empty((length, 4), dtype=np.int16)
        bbox[0], bbox[1:-1], bbox[-1] = CLS_BOX, boxes[content_words], SEP_BOX
        labels = np.full(length, IGNORE_INDEX, dtype=np.int16)
        labels[1:-1] = np.where(first[start:end], word_tags[content_words], IGNORE_INDEX)
        word_index = np.full(length, -1, dtype=np.int32)
        word_index[1:-1] = content_words
        result.append(Window(key, n_words, input_ids, bbox, labels, word_index))
    stats.words_cut += len(cut)
    return result


# ------------------------------------------------------------------------------------------ shards


class ShardWriter:
    """Collects one split's windows and writes a shard whenever ``shard_windows`` are waiting."""

    def __init__(self, folder: str, split: str, shard_windows: int) -> None:
        self.folder, self.split, self.shard_windows = folder, split, shard_windows
        self.pending: list[Window] = []
        self.shards: list[dict] = []

    def add(self, windows: Iterable[Window]) -> None:
        self.pending.extend(windows)
        while len(self.pending) >= self.shard_windows:
            self._write(self.pending[: self.shard_windows])
            self.pending = self.pending[self.shard_windows :]

    def close(self) -> list[dict]:
        if self.pending:
            self._write(self.pending)
            self.pending = []
        return self.shards

    def _write(self, windows: list[Window]) -> None:
        name = f"{self.split}-{len(self.shards):05d}.safetensors"
        data, receipts = encode_shard(windows)
        storage.write_bytes(storage.join(self.folder, name), data)
        tokens = sum(len(w.input_ids) for w in windows)
        self.shards.append({"file": name, "windows": len(windows), "tokens": tokens, "receipts": receipts})


def encode_shard(windows: Sequence[Window]) -> tuple[bytes, int]:
    receipts: list[str] = []
    receipt_index: dict[str, int] = {}
    receipt_words: list[int] = []
    for window in windows:
        if window.receipt not in receipt_index:
            receipt_index[window.receipt] = len(receipts)
            receipts.append(window.receipt)
            receipt_words.append(window.receipt_words)
    lengths = np.fromiter((len(w.input_ids) for w in windows), dtype=np.int64, count=len(windows))
    tensors = {
        "input_ids": np.concatenate([w.input_ids for w in windows]),
        "bbox": np.concatenate([w.bbox for w in windows]),
        "labels": np.concatenate([w.labels for w in windows]),
        "word_index": np.concatenate([w.word_index for w in windows]),
        "offsets": np.r_[0, np.cumsum(lengths)].astype(np.int64),
        "window_receipt": np.fromiter((receipt_index[w.receipt] for w in windows), dtype=np.int32),
        "receipt_words": np.asarray(receipt_words, dtype=np.int32),
    }
    return save_safetensors(tensors, metadata={"receipts": json.dumps(receipts)}), len(receipts)


def shard_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header length, then JSON."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def write_windows(
    batches: Iterable[pa.RecordBatch],
    tokenizer,
    labels: Sequence[str],
    folder: str,
    options: WindowOptions | None = None,
    settings: dict | None = None,
) -> tuple[dict, dict[str, WindowStats]]:
    """Stream receipt batches (columns key, split, words, boxes, tags) into shards under ``folder``.

    Returns the manifest (settings, label list, shard list) and the statistics per split. The caller
    stores the manifest; until then nothing points at the shards, so a crash leaves nothing loadable.
    """
    options = options or WindowOptions()
    tags = tag_names(labels)
    tag_ids = {tag: index for index, tag in enumerate(tags)}
    writers = {split: ShardWriter(folder, split, options.shard_windows) for split in SPLITS}
    stats = {split: WindowStats() for split in SPLITS}
    for batch in _rebatch(batches, options.batch_receipts):
        split_column = batch.column("split").to_pylist()
        for split in SPLITS:
            rows = [i for i, name in enumerate(split_column) if name == split]
            if not rows:
                continue
            chosen = batch.take(pa.array(rows))
            words = chosen.column("words").to_pylist()
            boxes = _boxes_of(chosen.column("boxes"))
            windows = tokenize_receipts(
                tokenizer, words, boxes, chosen.column("tags").to_pylist(), chosen.column("key").to_pylist(),
                tag_ids, options, stats[split],
            )  # fmt: skip
            stats[split].add(windows)
            writers[split].add(windows)
    manifest = {
        "format": FORMAT,
        "folder": folder,
        "labels": list(labels),
        "tags": tags,
        "window": {"max_length": options.max_length, "stride": options.stride},
        **(settings or {}),
        "splits": {
            split: {
                "windows": stats[split].windows,
                "tokens": stats[split].tokens,
                "receipts": stats[split].receipts,
                "shards": writers[split].close(),
            }
            for split in SPLITS
        },
    }
    return manifest, stats


def _rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for start in range(0, batch.num_rows, size):
            yield batch.slice(start, size)


def _boxes_of(column: pa.Array) -> list[np.ndarray]:
    """A list column of 4-int boxes to one (n, 4) array per row, without going through Python ints."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy()
    values = column.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
    base = offsets[0]
    return [values[offsets[i] - base : offsets[i + 1] - base] for i in range(len(column))]


def folder_name(split_version: str, tokenizer_fingerprint: str, options: WindowOptions) -> str:
    """Content-addressed: the same split, tokenizer and window settings always give the same folder."""
    key = f"{FORMAT}:{split_version}:{tokenizer_fingerprint}:{options.max_length}:{options.stride}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ reading


class WindowSet:
    """The windows of one split, loaded from its shards; a map-style dataset of unpadded windows.

    ``augment`` (see :mod:`box_augmentation`) is applied as each window is read, so the stored tensors
    never change.
    """

    def __init__(self, manifest: dict, split: str, augment=None) -> None:
        if manifest.get("format") != FORMAT:
            raise WindowError(f"windowed tensors of format {manifest.get('format')!r}; this code reads {FORMAT}")
        self.label_names: list[str] = manifest["labels"]
        self.tags: list[str] = manifest["tags"]
        self.augment = augment
        parts = {name: [] for name in ("input_ids", "bbox", "labels", "word_index", "window_receipt")}
        offsets = [np.zeros(1, dtype=np.int64)]
        self.receipts: list[str] = []
        receipt_words: list[np.ndarray] = []
        for shard in manifest["splits"][split]["shards"]:
            uri = storage.join(manifest["folder"], shard["file"])
            data = storage.read_bytes(uri)
            from safetensors.numpy import load

            tensors = load(data)
            keys = json.loads(shard_metadata(data)["receipts"])
            for name in ("input_ids", "bbox", "labels", "word_index"):
                parts[name].append(tensors[name])
            parts["window_receipt"].append(tensors["window_receipt"] + len(self.receipts))
            offsets.append(tensors["offsets"][1:] + offsets[-1][-1])
            self.receipts.extend(keys)
            receipt_words.append(tensors["receipt_words"])
        empty = {"bbox": np.zeros((0, 4), np.int16), "window_receipt": np.zeros(0, np.int32)}
        for name, chunks in parts.items():
            setattr(self, name, np.concatenate(chunks) if chunks else empty.get(name, np.zeros(0, np.int32)))
        self.offsets = np.concatenate(offsets)
        self.receipt_words = np.concatenate(receipt_words) if receipt_words else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        start, end = self.offsets[index], self.offsets[index + 1]
        bbox = self.bbox[start:end]
        if self.augment is not None:
            bbox = self.augment(bbox, self.word_index[start:end] < 0)
        return {
            "input_ids": self.input_ids[start:end],
            "bbox": bbox,
            "attention_mask": np.ones(end - start, dtype=np.int8),
            "labels": self.labels[start:end],
        }

    def subset(self, receipts: Iterable[str]) -> WindowSet:
        """The windows of ``receipts`` alone, in their order here: a sample of a split to score."""
        wanted = set(receipts)
        kept = [index for index, key in enumerate(self.receipts) if key in wanted]
        renumbered = np.full(len(self.receipts), -1, dtype=np.int64)
        renumbered[kept] = np.arange(len(kept))
        windows = np.isin(self.window_receipt, kept)
        tokens = np.repeat(windows, self.lengths)
        chosen = object.__new__(WindowSet)
        chosen.label_names, chosen.tags, chosen.augment = self.label_names, self.tags, self.augment
        for name in ("input_ids", "bbox", "labels", "word_index"):
            setattr(chosen, name, getattr(self, name)[tokens])
        chosen.window_receipt = renumbered[self.window_receipt[windows]].astype(self.window_receipt.dtype)
        chosen.offsets = np.r_[0, np.cumsum(self.lengths[windows])].astype(self.offsets.dtype)
        chosen.receipts = [self.receipts[index] for index in kept]
        chosen.receipt_words = self.receipt_words[kept]
        return chosen

    def window_words(self, index: int) -> tuple[str, np.ndarray]:
        """The receipt of a window and the word of each of its tokens (-1 on special tokens)."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.receipts[self.window_receipt[index]], self.word_index[start:end]


def merge_word_predictions(windows: WindowSet, predictions: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """One tag id per word of every receipt, from per-token predictions of each window.

    A word is read at its first sub-token; where overlapping windows both hold it, the window in which
    it sits furthest from an edge wins. Words no window holds get -1.
    """
    if len(predictions) != len(windows):
        raise WindowError(f"{len(predictions)} predictions for {len(windows)} windows")
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for index, predicted in enumerate(predictions):
        receipt, word_index = windows.window_words(index)
        n_words = int(windows.receipt_words[windows.window_receipt[index]])
        tags, centrality = best.setdefault(receipt, (np.full(n_words, -1, np.int64), np.full(n_words, -1, np.int64)))
        positions = np.arange(len(word_index))
        first = (word_index >= 0) & np.r_[True, word_index[1:] != word_index[:-1]]
        distance = np.minimum(positions, len(word_index) - 1 - positions)[first]
        words = word_index[first]
        better = distance > centrality[words]
        tags[words[better]] = np.asarray(predicted)[: len(word_index)][first][better]
        centrality[words[better]] = distance[better]
    return {receipt: tags for receipt, (tags, _) in best.items()}
