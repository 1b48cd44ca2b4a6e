"""Tokenising receipts into overlapping windows, storing them in shards, and merging predictions back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from receipt_pipeline.core import bio, storage, windows
from receipt_pipeline.core.base_model import load_tokenizer
from receipt_pipeline.core.box_augmentation import BoxAugmentation
from receipt_pipeline.core.windows import IGNORE_INDEX, WindowOptions, WindowSet, merge_word_predictions

LABELS = ["DATE", "PRODUCT_NAME", "TOTAL"]
TAGS = bio.tag_names(LABELS)
TAG_IDS = {tag: i for i, tag in enumerate(TAGS)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("compact")


def _long_receipt(n_words: int = 1400, seed: int = 0):
    """Words of one to four sub-tokens; long PRODUCT_NAME runs so that windows start inside entities."""
    rng = np.random.default_rng(seed)
    vocabulary = ["total", "cash", "12.50", "starbucks", "espresso", "x2", "visa", "thanks", "2026-11-23"]
    words = [str(rng.choice(vocabulary)) for _ in range(n_words)]
    labels = []
    while len(labels) < n_words:
        run = int(rng.integers(1, 60))
        labels += [rng.choice([None, "PRODUCT_NAME", "DATE", "TOTAL"])] * run
    tags = bio.bio_tags(labels[:n_words])
    boxes = np.column_stack(
        [
            np.arange(n_words) % 900,
            np.arange(n_words) % 950,
            np.arange(n_words) % 900 + 50,
            np.arange(n_words) % 950 + 20,
        ]
    )
    return words, boxes.astype(np.int16), tags


def _windows_of(tokenizer, words, boxes, tags, options=None, key="dynamo/long/00001"):
    stats = windows.WindowStats()
    result = windows.tokenize_receipts(
        tokenizer, [words], [boxes], [tags], [key], TAG_IDS, options or WindowOptions(), stats
    )
    return result, stats


def test_window_bounds_stay_on_word_boundaries_and_overlap_by_at_most_the_stride():
    rng = np.random.default_rng(1)
    word_lengths = rng.integers(1, 6, size=800)
    starts = np.r_[0, np.cumsum(word_lengths)[:-1]]
    n_tokens = int(word_lengths.sum())
    bounds = windows.window_bounds(starts, n_tokens, span=510, stride=128)
    boundaries = set(starts.tolist()) | {n_tokens}
    assert bounds[0][0] == 0 and bounds[-1][1] == n_tokens
    for (start, end), (next_start, _) in zip(bounds, bounds[1:], strict=False):
        assert end - start <= 510
        assert {start, end} <= boundaries
        assert 0 < end - next_start <= 128, "consecutive windows overlap, by at most the stride"
    assert windows.window_bounds(starts[:10], 20, span=510, stride=128) == [(0, 20)]


def test_a_receipt_longer_than_three_windows_merges_back_to_each_word_exactly_once(tokenizer):
    words, boxes, tags = _long_receipt()
    result, stats = _windows_of(tokenizer, words, boxes, tags)
    assert len(result) > 3 and stats.windows_per_receipt == {len(result): 1}
    assert stats.words_cut == 0
    for window in result:
        assert len(window.input_ids) <= 512
        assert window.input_ids[0] == tokenizer.cls_token_id and window.input_ids[-1] == tokenizer.sep_token_id
        assert window.bbox[0].tolist() == [0, 0, 0, 0] and window.bbox[-1].tolist() == [1000, 1000, 1000, 1000]
        assert window.bbox.min() >= 0 and window.bbox.max() <= 1000
        assert window.labels[0] == window.labels[-1] == IGNORE_INDEX
        content = window.word_index[1:-1]
        # each sub-token carries its word's box; only a word's first sub-token carries its tag
        assert (window.bbox[1:-1] == boxes[content]).all()
        first = np.r_[True, content[1:] != content[:-1]]
        assert (window.labels[1:-1][~first] == IGNORE_INDEX).all()
        assert [TAGS[i] for i in window.labels[1:-1][first]] == [tags[w] for w in content[first]]
        # a window never cuts a word: it holds all of the sub-tokens of each word in it
        for word in np.unique(content):
            assert (content == word).sum() == len(tokenizer.tokenize(words[word]))

    starts_inside = [w for w in result[1:] if TAGS[w.labels[1]].startswith("I-")]
    assert starts_inside, "the fixture should start some window inside an entity"
    # such a window keeps the receipt-level I- tag on its first word; the merge still gives every tag back
    shard, _ = windows.encode_shard(result)
    window_set = _window_set_from_bytes(shard)
    merged = merge_word_predictions(window_set, [window_set[i]["labels"] for i in range(len(window_set))])
    assert [TAGS[i] for i in merged["dynamo/long/00001"]] == tags


def _window_set_from_bytes(data: bytes, tmp_folder=None) -> WindowSet:
    import tempfile

    folder = tmp_folder or tempfile.mkdtemp()
    storage.write_bytes(storage.join(folder, "validation-00000.safetensors"), data)
    manifest = {
        "format": windows.FORMAT,
        "folder": folder,
        "labels": LABELS,
        "tags": TAGS,
        "splits": {"validation": {"shards": [{"file": "validation-00000.safetensors"}]}},
    }
    return WindowSet(manifest, "validation")


def test_the_most_central_window_wins_a_word_held_by_two(tokenizer):
    words, boxes, tags = _long_receipt(700)
    result, _ = _windows_of(tokenizer, words, boxes, tags)
    assert len(result) >= 2
    window_set = _window_set_from_bytes(windows.encode_shard(result)[0])
    # window 0 predicts tag 1 everywhere, window 1 tag 2: in the overlap, each word goes to the window
    # in which it sits further from an edge
    predictions = [np.full(len(window_set[i]["labels"]), i + 1) for i in range(len(window_set))]
    merged = merge_word_predictions(window_set, predictions)["dynamo/long/00001"]
    _, first_words = window_set.window_words(0)
    _, second_words = window_set.window_words(1)
    shared = sorted(set(first_words[first_words >= 0]) & set(second_words[second_words >= 0]))
    assert shared
    first_positions = {w: np.flatnonzero(first_words == w)[0] for w in shared}
    second_positions = {w: np.flatnonzero(second_words == w)[0] for w in shared}
    for word in shared:
        in_first = min(first_positions[word], len(first_words) - 1 - first_positions[word])
        in_second = min(second_positions[word], len(second_words) - 1 - second_positions[word])
        assert merged[word] == (1 if in_first >= in_second else 2)


def test_a_word_longer_than_a_window_is_cut_and_counted(tokenizer):
    giant = "-".join(["x"] * 400)  # 799 sub-tokens
    words, boxes, tags = ["total", giant, "12.50"], np.array([[0, 0, 10, 10]] * 3, np.int16), ["O", "O", "B-TOTAL"]
    result, stats = _windows_of(tokenizer, words, boxes, tags)
    assert stats.words_cut == 1
    assert all(len(w.input_ids) <= 512 for w in result)
    window_set = _window_set_from_bytes(windows.encode_shard(result)[0])
    merged = merge_word_predictions(window_set, [window_set[i]["labels"] for i in range(len(window_set))])
    assert [TAGS[i] for i in merged["dynamo/long/00001"]] == tags


def test_empty_and_erased_words_get_an_unk_token_so_none_is_lost(tokenizer):
    words = ["total", "", "\u200b", "12.50"]
    boxes = np.zeros((4, 4), np.int16)
    tags = ["O", "O", "O", "B-TOTAL"]
    [window], stats = _windows_of(tokenizer, words, boxes, tags)
    assert stats.words_replaced_by_unk == 2
    assert sorted(set(window.word_index[1:-1].tolist())) == [0, 1, 2, 3]
    assert (window.input_ids == tokenizer.unk_token_id).sum() == 2
    assert (
        tokenizer.unk_token_id not in tokenizer(["total", "12.50", "starbucks"], is_split_into_words=True)["input_ids"]
    )


def _split_table(n_receipts=12):
    rows = {name: [] for name in ("key", "split", "words", "boxes", "tags")}
    for i in range(n_receipts):
        words, boxes, tags = _long_receipt(40 + 90 * (i % 5), seed=i)
        rows["key"].append(f"dynamo/r{i}/00001")
        rows["split"].append(bio.SPLITS[i % 3])
        rows["words"].append(words)
        rows["boxes"].append(boxes.tolist())
        rows["tags"].append(tags)
    return pa.table(rows, schema=pa.schema([bio.SCHEMA.field(n) for n in rows]))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_shards_round_trip_unpadded_with_their_manifest(tokenizer, tmp_path, where, request, aws_emulator):
    # aws_emulator is named here so that the session's emulator starts before this test's environment guard
    folder = str(tmp_path / "windows")
    if where == "s3":
        folder = f"s3://{request.getfixturevalue('artifacts_bucket')}/windows/abc"
    table = _split_table()
    options = WindowOptions(shard_windows=3, batch_receipts=5)
    manifest, stats = windows.write_windows(table.to_batches(max_chunksize=4), tokenizer, LABELS, folder, options)
    assert manifest["tags"] == TAGS and manifest["window"] == {"max_length": 512, "stride": 128}
    for split in bio.SPLITS:
        shards = manifest["splits"][split]["shards"]
        assert len(shards) == -(-stats[split].windows // 3)
        loaded = WindowSet(manifest, split)
        assert len(loaded) == stats[split].windows == manifest["splits"][split]["windows"]
        assert sorted(loaded.lengths.tolist()) == sorted(stats[split].lengths)
        assert int(loaded.lengths.sum()) == manifest["splits"][split]["tokens"]
        assert loaded.lengths.max() <= 512 and len(set(loaded.lengths.tolist())) > 1, "stored unpadded"
        rows = table.filter(pa.compute.equal(table.column("split"), split))
        truth = dict(zip(rows.column("key").to_pylist(), rows.column("tags").to_pylist(), strict=True))
        merged = merge_word_predictions(loaded, [loaded[i]["labels"] for i in range(len(loaded))])
        assert {key: [TAGS[i] for i in ids] for key, ids in merged.items()} == truth
    # the same input, tokenizer and settings write the same bytes
    again, _ = windows.write_windows(table.to_batches(max_chunksize=7), tokenizer, LABELS, folder + "-again", options)
    for split in bio.SPLITS:
        for first, second in zip(manifest["splits"][split]["shards"], again["splits"][split]["shards"], strict=True):
            a = storage.read_bytes(storage.join(folder, first["file"]))
            b = storage.read_bytes(storage.join(folder + "-again", second["file"]))
            assert a == b


def test_a_subset_holds_its_receipts_windows_alone_and_merges_back_to_their_words(tokenizer, tmp_path):
    table = _split_table()
    manifest, _ = windows.write_windows(table.to_batches(), tokenizer, LABELS, str(tmp_path / "windows"))
    train = WindowSet(manifest, "train")
    chosen = train.receipts[1:3]
    subset = train.subset([*chosen, "dynamo/not-there/00001"])
    assert subset.receipts == chosen and len(subset) < len(train)
    assert int(subset.lengths.sum()) == len(subset.input_ids) == len(subset.labels)
    rows = table.filter(pa.compute.is_in(table.column("key"), pa.array(chosen)))
    truth = dict(zip(rows.column("key").to_pylist(), rows.column("tags").to_pylist(), strict=True))
    merged = merge_word_predictions(subset, [subset[i]["labels"] for i in range(len(subset))])
    assert {key: [TAGS[i] for i in ids] for key, ids in merged.items()} == truth
    assert len(train.subset([])) == 0


def test_an_unknown_tag_names_the_receipt(tokenizer):
    with pytest.raises(windows.WindowError, match="dynamo/long/00001.*B-TIP"):
        _windows_of(tokenizer, ["tip"], np.zeros((1, 4), np.int16), ["B-TIP"])


def test_window_settings_are_validated():
    with pytest.raises(windows.WindowError, match="stride"):
        WindowOptions(max_length=512, stride=510)
    with pytest.raises(windows.WindowError, match="max_length"):
        WindowOptions(max_length=4)


def test_box_augmentation_moves_word_boxes_a_little_and_never_leaves_the_page(tokenizer, tmp_path):
    words, boxes, tags = _long_receipt(300)
    result, _ = _windows_of(tokenizer, words, boxes, tags)
    plain = _window_set_from_bytes(windows.encode_shard(result)[0], str(tmp_path))
    stored = plain.bbox.copy()
    augmented = _window_set_from_bytes(windows.encode_shard(result)[0], str(tmp_path))
    augmented.augment = BoxAugmentation(seed=3)
    for index in range(len(augmented)):
        original, moved = plain[index]["bbox"], augmented[index]["bbox"]
        assert moved.min() >= 0 and moved.max() <= 1000
        assert (moved[:, 0] <= moved[:, 2]).all() and (moved[:, 1] <= moved[:, 3]).all()
        assert (moved[0] == original[0]).all() and (moved[-1] == original[-1]).all(), "special tokens keep their boxes"
        assert (moved != original).any()
        assert np.abs(moved.astype(int) - original.astype(int)).max() <= 40, "a small change: 2 degrees, 5%, 3 units"
    assert (augmented.bbox == stored).all(), "the stored tensors do not change"
    again = BoxAugmentation(seed=3)
    first = BoxAugmentation(seed=3)
    assert (first(stored[:50], np.zeros(50, bool)) == again(stored[:50], np.zeros(50, bool))).all()


def test_box_augmentation_draws_differently_in_each_dataloader_worker_and_each_epoch(tokenizer, tmp_path):
    import torch

    words, boxes, tags = _long_receipt(60)
    result, _ = _windows_of(tokenizer, words, boxes, tags)
    augmented = _window_set_from_bytes(windows.encode_shard(result)[0], str(tmp_path))
    augmented.augment = BoxAugmentation(seed=3)
    # the same window four times, one a batch: workers 0 and 1 take turns, as with the Trainer's loader on a GPU
    same_window = torch.utils.data.Subset(augmented, [0, 0, 0, 0])
    loader = torch.utils.data.DataLoader(
        same_window, batch_size=1, num_workers=2, collate_fn=lambda batch: batch[0]["bbox"].copy()
    )

    first_epoch = list(loader)
    second_epoch = list(loader)

    worker_0, worker_1 = first_epoch[0], first_epoch[1]
    assert (worker_0 != worker_1).any(), "each worker draws its own augmentation"
    assert (first_epoch[0] != first_epoch[2]).any(), "a worker's draws go on from batch to batch"
    assert all((a != b).any() for a, b in zip(first_epoch, second_epoch, strict=True)), "a new epoch, new draws"
    stored = augmented.bbox[augmented.offsets[0] : augmented.offsets[1]]
    assert all((drawn != stored).any() for drawn in first_epoch + second_epoch)
