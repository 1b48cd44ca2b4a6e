"""BIO tagging, the y flip, the receipt-level split and its checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from receipt_pipeline.core import bio, word_table
from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble
from receipt_pipeline.core.synthetic import iter_receipt_items
from receipt_pipeline_tests.core.test_dynamo_reader import _labelled_receipt
from receipt_pipeline_tests.dynamo_items import box, label_item, word_item


def _words(receipt: str, labels: list[str | None], *, source="dynamo", source_split=None, line_of=None):
    """A word table of one receipt, one word per label, each word on its own line unless ``line_of`` says."""
    n = len(labels)
    lines = line_of or list(range(1, n + 1))
    return word_table.to_frame(
        {
            "source": [source] * n,
            "source_split": [source_split] * n,
            "image_id": [receipt] * n,
            "receipt_id": [1] * n,
            "line_id": lines,
            "word_id": [i + 1 for i in range(n)],
            "text": [f"w{i}" for i in range(n)],
            "x0": [0.1] * n,
            "y0": [i / (n + 1) for i in range(n)],
            "x1": [0.2] * n,
            "y1": [(i + 1) / (n + 1) for i in range(n)],
            "confidence": [1.0] * n,
            "labels": [[label] if label else [] for label in labels],
            "label": labels,
        }
    )


@pytest.mark.parametrize(
    ("labels", "tags"),
    [
        # a run of one label: B then I
        (["DATE", "DATE", "DATE"], ["B-DATE", "I-DATE", "I-DATE"]),
        # one-word entities, and two runs of the same label split by an O
        (["TAX", None, "TAX"], ["B-TAX", "O", "B-TAX"]),
        # a label change without a gap starts a new entity
        (["MERCHANT_NAME", "ADDRESS_LINE", "ADDRESS_LINE"], ["B-MERCHANT_NAME", "B-ADDRESS_LINE", "I-ADDRESS_LINE"]),
        ([None, None], ["O", "O"]),
        ([], []),
    ],
)
def test_bio_tags_mark_the_first_word_of_each_run(labels, tags):
    assert bio.bio_tags(labels) == tags


def test_the_vectorised_tags_match_the_plain_rule_and_restart_at_each_receipt():
    frames = [_words("a", ["DATE", "DATE"]), _words("b", ["DATE", None, "DATE", "DATE"])]
    result = bio.build_split(frames, bio.SplitOptions(entity_share_target=0))
    tags = dict(zip(result.table.column("key").to_pylist(), result.table.column("tags").to_pylist(), strict=True))
    # receipt b's first DATE follows receipt a's last DATE in the concatenated table, yet begins an entity
    assert tags == {
        "dynamo/a/00001": bio.bio_tags(["DATE", "DATE"]),
        "dynamo/b/00001": bio.bio_tags(["DATE", None, "DATE", "DATE"]),
    }


def test_merged_labels_tag_as_one_entity_and_the_label_list_is_sorted():
    # SUBTOTAL then TAX on one line: two entities, until both are merged into AMOUNT, when they are one
    image = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    items = [
        word_item(image, 1, 1, 1, "ACME", box(0.1, 0.9, 0.2, 0.05)),
        word_item(image, 1, 2, 1, "12.00", box(0.1, 0.5, 0.2, 0.04)),
        word_item(image, 1, 2, 2, "0.96", box(0.4, 0.5, 0.2, 0.04)),
        word_item(image, 1, 2, 3, "thanks", box(0.7, 0.5, 0.2, 0.04)),
        label_item(image, 1, 1, 1, "MERCHANT_NAME"),
        label_item(image, 1, 2, 1, "SUBTOTAL"),
        label_item(image, 1, 2, 2, "TAX"),
    ]

    def tags_with(merges):
        frame = word_table.to_frame(assemble(items, ReadOptions(table="t", label_merges=merges)).columns)
        result = bio.build_split([frame], bio.SplitOptions(entity_share_target=0))
        [tags] = result.table.column("tags").to_pylist()
        return tags, result

    tags, _ = tags_with({})
    assert tags == ["B-MERCHANT_NAME", "B-SUBTOTAL", "B-TAX", "O"]
    tags, result = tags_with({"SUBTOTAL": "AMOUNT", "TAX": "AMOUNT", "MERCHANT_NAME": "STORE"})
    assert tags == ["B-STORE", "B-AMOUNT", "I-AMOUNT", "O"]
    assert result.labels == ["AMOUNT", "STORE"]
    assert bio.labels_of(result.table.schema.metadata) == ["AMOUNT", "STORE"]


def test_boxes_are_flipped_once_and_scaled_to_0_1000_integers():
    # the reader flips the stored y-up box (x, y, w, h) to (x, 1 - (y + h), x + w, 1 - y); the split scales it
    items = _labelled_receipt()
    frame = word_table.to_frame(assemble(items, ReadOptions(table="t")).columns)
    result = bio.build_split([frame], bio.SplitOptions(entity_share_target=0))
    [boxes] = result.table.column("boxes").to_pylist()
    expected = bio.scale_boxes(frame["x0"], frame["y0"], frame["x1"], frame["y1"]).tolist()
    assert boxes == expected
    word = next(item for item in items if item["SK"].endswith("WORD#00001") and "LINE#00001" in item["SK"])
    box = {k: float(v) for k, v in word["bounding_box"].items()}
    top = round((1 - (box["y"] + box["height"])) * 1000)
    assert boxes[0] == [
        round(box["x"] * 1000),
        top,
        round((box["x"] + box["width"]) * 1000),
        round((1 - box["y"]) * 1000),
    ]
    assert boxes[0][1] < boxes[0][3], "y points down: the top edge has the smaller y"


def test_scale_boxes_clips_rounds_and_orders():
    boxes = bio.scale_boxes([-0.01, 0.5, 0.9996], [0.2, np.nan, 0.0], [0.3, 0.4, 1.2], [0.1, 0.5, 0.0004])
    assert boxes.tolist() == [[0, 100, 300, 200], [400, 0, 500, 500], [1000, 0, 1000, 0]]
    assert boxes.dtype == np.int16


def test_the_split_is_deterministic_from_key_and_seed_and_close_to_the_shares():
    keys = [f"dynamo/{i:08x}/00001" for i in range(20_000)]
    first = [bio.assign_split(key, 42) for key in keys]
    assert first == [bio.assign_split(key, 42) for key in keys]
    shares = {name: first.count(name) / len(keys) for name in bio.SPLITS}
    assert shares == pytest.approx({"train": 0.8, "validation": 0.1, "test": 0.1}, abs=0.01)
    other_seed = [bio.assign_split(key, 43) for key in keys]
    assert sum(a != b for a, b in zip(first, other_seed, strict=True)) > 0.2 * len(keys)


def test_the_split_does_not_depend_on_input_order():
    frames = [_words(f"r{i}", ["DATE", None]) for i in range(30)]
    forward = bio.build_split(frames, bio.SplitOptions(entity_share_target=0))
    backward = bio.build_split(frames[::-1], bio.SplitOptions(entity_share_target=0))
    assert forward.table.equals(backward.table)
    assert forward.data_version == backward.data_version


def test_sroie_test_receipts_always_land_in_test_and_pinned_keys_in_validation():
    frames = [_words(f"s{i}", ["TOTAL"], source="sroie", source_split="test") for i in range(20)]
    frames += [_words(f"d{i}", ["DATE"]) for i in range(20)]
    pinned = frozenset({"dynamo/d3/00001", "dynamo/d4/00001", "sroie/s0/00001", "dynamo/missing/00001"})
    result = bio.build_split(frames, bio.SplitOptions(pinned_validation=pinned, entity_share_target=0))
    split_of = dict(zip(result.table.column("key").to_pylist(), result.table.column("split").to_pylist(), strict=True))
    assert {split_of[f"sroie/s{i}/00001"] for i in range(20)} == {"test"}
    assert split_of["dynamo/d3/00001"] == split_of["dynamo/d4/00001"] == "validation"
    assert result.pinned_missing == ["dynamo/missing/00001"]
    # SROIE's field names are renamed to the table's
    assert result.labels == ["DATE", "GRAND_TOTAL"]


def test_pinned_keys_are_read_from_a_local_file_or_s3(tmp_path, artifacts_bucket):
    from receipt_pipeline.core import storage

    text = "# validation receipts\ndynamo/a/00001\n\n  sroie/X1/00001  \n"
    (tmp_path / "keys.txt").write_text(text)
    storage.write_bytes(f"s3://{artifacts_bucket}/pinned/keys.txt", text.encode())
    expected = ["dynamo/a/00001", "sroie/X1/00001"]
    assert bio.read_pinned_keys(str(tmp_path / "keys.txt")) == expected
    assert bio.read_pinned_keys(f"s3://{artifacts_bucket}/pinned/keys.txt") == expected


def _synthetic_frame(receipts: int, seed: int = 3):
    return word_table.to_frame(assemble(iter_receipt_items(receipts, seed), ReadOptions(table="t")).columns)


def test_down_sampling_drops_only_all_o_train_lines_toward_the_target():
    frame = _synthetic_frame(60)
    untouched = bio.build_split([frame], bio.SplitOptions(entity_share_target=0))
    sampled = bio.build_split([frame], bio.SplitOptions(entity_share_target=0.7))
    assert sampled.entity_share_before == untouched.entity_share_after < 0.7
    assert sampled.entity_share_after > sampled.entity_share_before
    assert sampled.dropped_train_lines > 0

    def rows(result, split):
        table = result.table.filter(pa.compute.equal(result.table.column("split"), split))
        return {
            key: (words, tags, lines)
            for key, words, tags, lines in zip(
                *(table.column(c).to_pylist() for c in ("key", "words", "tags", "line_ids")), strict=True
            )
        }

    for split in ("validation", "test"):
        assert rows(sampled, split) == rows(untouched, split)
    kept, full = rows(sampled, "train"), rows(untouched, "train")
    for key, (_words, tags, lines) in full.items():
        kept_lines = set(kept[key][2]) if key in kept else set()
        for line in set(lines):
            line_tags = [tag for tag, line_id in zip(tags, lines, strict=True) if line_id == line]
            if any(tag != "O" for tag in line_tags):
                assert line in kept_lines, "a line with an entity word is never dropped"
        # tags were computed before dropping: the kept words keep their receipt-level tags
        if key in kept:
            assert kept[key][1] == [t for t, line in zip(tags, lines, strict=True) if line in kept_lines]
    # short of the target only when every all-O train line is gone: O words on entity lines always stay
    all_o_lines_left = sum(
        all(tag == "O" for tag, line_id in zip(tags, lines, strict=True) if line_id == line)
        for _, tags, lines in kept.values()
        for line in set(lines)
    )
    assert sampled.entity_share_after >= 0.7 - 0.005 or all_o_lines_left == 0
    reachable = (sampled.entity_share_before + sampled.entity_share_after) / 2
    gentle = bio.build_split([frame], bio.SplitOptions(entity_share_target=reachable))
    assert gentle.entity_share_after == pytest.approx(reachable, abs=0.01)


def test_down_sampling_is_off_at_zero_and_seeded():
    frame = _synthetic_frame(30)
    off = bio.build_split([frame], bio.SplitOptions(entity_share_target=0))
    assert off.dropped_train_words == 0
    once = bio.build_split([frame], bio.SplitOptions(entity_share_target=0.6, seed=1))
    again = bio.build_split([frame], bio.SplitOptions(entity_share_target=0.6, seed=1))
    assert once.table.equals(again.table)


def test_the_checks_find_a_planted_leak_an_empty_split_unseen_labels_and_bad_boxes():
    frames = [_words(f"r{i}", ["DATE", "TAX"]) for i in range(40)]
    clean = bio.build_split(frames, bio.SplitOptions(entity_share_target=0)).table
    assert bio.receipts_in_two_splits(clean) == []
    assert bio.empty_splits(clean) == []
    assert bio.labels_unseen_in_train(clean) == []
    assert bio.boxes_out_of_range(clean) == []

    train_row = clean.filter(pa.compute.equal(clean.column("split"), "train")).slice(0, 1)
    key = train_row.column("key")[0].as_py()
    leak = train_row.set_column(train_row.schema.get_field_index("split"), "split", pa.array(["validation"]))
    assert bio.receipts_in_two_splits(pa.concat_tables([clean, leak])) == [key]

    no_test = clean.filter(pa.compute.not_equal(clean.column("split"), "test"))
    assert bio.empty_splits(no_test) == ["test"]

    odd = _words("odd", ["TIP"])
    with_tip = bio.build_split(
        [*frames, odd], bio.SplitOptions(pinned_validation=frozenset({"dynamo/odd/00001"}), entity_share_target=0)
    )
    assert bio.labels_unseen_in_train(with_tip.table) == ["TIP"]

    boxes = clean.column("boxes").to_pylist()
    boxes[0][1] = [500, 10, 400, 20]  # x0 > x1
    boxes[1][0] = [0, 0, 10, 1001]
    broken = clean.set_column(
        clean.schema.get_field_index("boxes"), "boxes", pa.array(boxes, bio.SCHEMA.field("boxes").type)
    )
    keys = clean.column("key").to_pylist()
    assert bio.boxes_out_of_range(broken) == [f"{keys[0]}#1", f"{keys[1]}#0"]


def test_bad_shares_and_targets_are_refused_clearly():
    with pytest.raises(bio.SplitError, match="summing to 1"):
        bio.SplitOptions(shares=(0.8, 0.1, 0.2))
    with pytest.raises(bio.SplitError, match="entity_share_target"):
        bio.SplitOptions(entity_share_target=1.0)
    with pytest.raises(bio.SplitError, match="no words"):
        bio.build_split([word_table.empty_frame()])


# ------------------------------------------------------------------------------------------ strategies


def _dated_synthetic_frame(receipts: int, seed: int = 3):
    """The synthetic table's words as the reader gives them, with each receipt's timestamp_added."""
    partial = assemble(iter_receipt_items(receipts, seed), ReadOptions(table="t"))
    frame = word_table.to_frame(partial.columns)
    frame.attrs[word_table.RECEIPT_ADDED_ATTR] = {
        word_table.receipt_key(word_table.SOURCE_DYNAMO, *key): stamp for key, stamp in partial.receipt_added.items()
    }
    return frame, partial


def _column(table: pa.Table, name: str) -> dict:
    return dict(zip(table.column("key").to_pylist(), table.column(name).to_pylist(), strict=True))


@pytest.fixture(scope="module")
def dated_frame():
    return _dated_synthetic_frame(160)


def test_the_reader_dates_every_receipt_it_reads_by_its_receipt_items_timestamp(dated_frame):
    frame, partial = dated_frame
    receipts = {tuple(k) for k in frame[["image_id", "receipt_id"]].drop_duplicates().itertuples(index=False)}
    assert set(partial.receipt_added) == receipts
    assert all(np.isfinite(word_table.sortable_time(stamp)) for stamp in partial.receipt_added.values())


def test_merchants_are_the_receipts_normalised_merchant_name_words():
    assert bio.normalised_merchant(" Joe's  Diner, Inc. ") == "JOE S DINER INC"
    assert bio.normalised_merchant("...") == bio.UNKNOWN_MERCHANT
    frames = [_words("a", ["MERCHANT_NAME", "MERCHANT_NAME", "DATE"]), _words("b", ["DATE"])]
    merchant = _column(bio.build_split(frames).table, "merchant")
    assert merchant == {"dynamo/a/00001": "W0 W1", "dynamo/b/00001": bio.UNKNOWN_MERCHANT}


def test_the_merchant_strategy_holds_whole_merchants_out_of_train(dated_frame):
    frame, _ = dated_frame
    random = bio.build_split([frame], bio.SplitOptions(strategy="random"))
    assert random.record["test_merchants_seen_in_train"] > 0, "a random split shares merchants across splits"
    result = bio.build_split([frame], bio.SplitOptions(strategy="merchant"))
    split, merchant = _column(result.table, "split"), _column(result.table, "merchant")
    splits_of_merchant: dict[str, set] = {}
    for key, name in merchant.items():
        splits_of_merchant.setdefault(name, set()).add(split[key])
    assert all(len(splits) == 1 for splits in splits_of_merchant.values()), "a merchant in two splits"
    assert result.record["test_merchants_seen_in_train"] == 0
    assert result.record["merchants"]["test"] >= 1 and result.record["merchants"]["validation"] >= 1
    counts = result.receipts_per_split()
    assert counts["test"] >= 0.1 * len(merchant) and counts["train"] >= 0.6 * len(merchant)


def test_the_recent_strategy_tests_on_the_newest_receipts_and_sroie_keeps_its_own(dated_frame):
    frame, _ = dated_frame
    sroie = [_words(f"s{i}", ["TOTAL"], source="sroie", source_split="test" if i < 5 else "train") for i in range(30)]
    result = bio.build_split([frame, *sroie], bio.SplitOptions(strategy="recent"))
    split, added = _column(result.table, "split"), _column(result.table, "added_at")
    moments = {
        name: [word_table.sortable_time(added[k]) for k in split if split[k] == name and added[k]]
        for name in split.values()
    }
    assert min(moments["test"]) >= max(moments["validation"]) >= max(moments["train"])
    assert len(moments["test"]) == round(0.1 * len(moments["train"] + moments["validation"] + moments["test"]))
    assert result.record["recent_since"] == min(
        (added[k] for k in split if split[k] == "test" and added[k]), key=word_table.sortable_time
    )
    random = _column(bio.build_split([frame, *sroie]).table, "split")
    for i in range(30):
        key = f"sroie/s{i}/00001"
        assert added[key] is None
        assert split[key] == ("test" if i < 5 else random[key]), "undated receipts keep their hash split"


@pytest.mark.parametrize("strategy", bio.STRATEGIES)
def test_pinned_test_keys_override_every_strategy_and_the_record_hashes_the_test_keys(dated_frame, strategy):
    frame, _ = dated_frame
    keys = sorted(_column(bio.build_split([frame]).table, "split"))
    pinned = frozenset(keys[:7])
    options = bio.SplitOptions(strategy=strategy, pinned_test=pinned)
    result = bio.build_split([frame], options)
    split = _column(result.table, "split")
    assert all(split[key] == "test" for key in pinned)
    test_keys = [key for key, name in split.items() if name == "test"]
    assert result.record["keys_sha256"]["test"] == bio.keys_digest(test_keys) == bio.keys_digest(test_keys[::-1])
    assert result.record["strategy"] == strategy and result.record["labels"] == result.labels
    assert bio.record_of(result.table.schema.metadata) == result.record
    again = bio.build_split([frame.iloc[::-1]], options)
    assert again.record["keys_sha256"] == result.record["keys_sha256"], "the same receipts hash the same"
    other = bio.build_split([frame], bio.SplitOptions(strategy=strategy, pinned_test=pinned, seed=7))
    if strategy != "recent":  # the newest receipts do not depend on the seed
        assert other.record["keys_sha256"]["test"] != result.record["keys_sha256"]["test"]


def test_a_key_pinned_to_validation_and_test_and_an_unknown_strategy_are_refused():
    with pytest.raises(bio.SplitError, match="both validation and test"):
        bio.SplitOptions(pinned_validation=frozenset({"a"}), pinned_test=frozenset({"a", "b"}))
    with pytest.raises(bio.SplitError, match="strategy must be one of"):
        bio.SplitOptions(strategy="by-date")  # type: ignore[arg-type]
