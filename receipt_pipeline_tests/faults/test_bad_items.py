"""Malformed word and label items, one kind at a time, each stored in the emulator's table with real DynamoDB
types (a number where a string belongs is an N, NaN can only be the string "NaN": DynamoDB stores no NaN
number). Each is skipped, counted under its reason and listed with its key; the good words are all still
read. Over the threshold the asset fails, its message naming every bad item and its problem.
"""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble, read_receipt_words
from receipt_pipeline.core.dynamo_schema import item_key, label_sk, word_sk
from receipt_pipeline.defs import ingestion
from receipt_pipeline_tests.core.test_dynamo_reader import IMAGE_A, _labelled_receipt
from receipt_pipeline_tests.defs.test_ingestion import _failure_message, _local_settings, _materialize, _metadata
from receipt_pipeline_tests.dynamo_items import label_item, put_items, word_item

# what the good part of the table reads as, whatever bad item sits beside it
GOOD_TEXTS = ["ACME", "MART", "TOTAL", "12.50"]
GOOD_LABELS = ["MERCHANT_NAME", "MERCHANT_NAME", None, "GRAND_TOTAL"]


KEEP = object()


def _box(x, y, width=0.1, height=0.02, **others) -> dict:
    """A bounding box stored as given: strings stay strings (S), booleans BOOL, numbers become N."""
    values = {"x": x, "y": y, "width": width, "height": height, **others}
    return {k: v if isinstance(v, str | bool) else Decimal(str(v)) for k, v in values.items() if v is not None}


def _word(word: int, text=KEEP, bounding_box=KEEP, **attributes) -> dict:
    """A word on line 3 of image A's receipt 1 (a receipt with VALID labels); each attribute given is stored
    as given, None removes it."""
    item = word_item(IMAGE_A, 1, 3, word, "BAD", None)
    item["bounding_box"] = _box(0.1, 0.1)
    overrides = {"text": text, "bounding_box": bounding_box, **attributes}
    for name, value in overrides.items():
        if value is None:
            item.pop(name, None)
        elif value is not KEEP:
            item[name] = value
    return item


def _label(line: int, word: int, name: str, **attributes) -> dict:
    """A VALID label ``name`` (named in its keys, as the users' writer does) on a word of image A's receipt 1;
    each attribute given is stored as given, None removes it."""
    item = label_item(IMAGE_A, 1, line, word, name)
    for name, value in attributes.items():
        if value is None:
            item.pop(name, None)
        else:
            item[name] = value
    return item


# kind of malformed item -> (the items, the reasons they are counted under)
MALFORMED = {
    # words: missing fields
    "word without text": ([_word(1, text=None)], {"missing_text": 1}),
    "word with blank text": ([_word(1, text="   ")], {"missing_text": 1}),
    "word without a box": ([_word(1, bounding_box=None)], {"missing_box": 1}),
    "box without a height": ([_word(1, bounding_box=_box(0.1, 0.1, height=None))], {"missing_box": 1}),
    # words: wrong types
    "text stored as a number": ([_word(1, text=Decimal(42))], {"wrong_type": 1}),
    "box stored as a string": ([_word(1, bounding_box="0.1,0.1,0.1,0.02")], {"wrong_type": 1}),
    "coordinate stored as a word": ([_word(1, bounding_box=_box("left", 0.1))], {"non_numeric_coordinate": 1}),
    "coordinate stored as a boolean": ([_word(1, bounding_box=_box(True, 0.1))], {"non_numeric_coordinate": 1}),
    "confidence stored as a word": ([_word(1, confidence="high")], {"wrong_type": 1}),
    # words: NaN
    "NaN coordinate": ([_word(1, bounding_box=_box("NaN", 0.1))], {"nan_coordinate": 1}),
    "infinite size": ([_word(1, bounding_box=_box(0.1, 0.1, width="Infinity"))], {"nan_coordinate": 1}),
    "NaN confidence": ([_word(1, confidence="NaN")], {"nan_confidence": 1}),
    # words: out of range
    # (a box that only overhangs the receipt is clamped and kept: test_dynamo_reader's overhanging words)
    "box wholly past the right edge": ([_word(1, bounding_box=_box(1.2, 0.5))], {"coordinate_out_of_range": 1}),
    "box wholly below the bottom": ([_word(1, bounding_box=_box(0.1, -0.2))], {"coordinate_out_of_range": 1}),
    "negative width": ([_word(1, bounding_box=_box(0.5, 0.5, -0.1))], {"negative_box_size": 1}),
    "zero height": ([_word(1, bounding_box=_box(0.5, 0.5, 0.1, 0))], {"zero_box_size": 1}),
    "confidence above 1": ([_word(1, confidence=Decimal("1.5"))], {"confidence_out_of_range": 1}),
    "confidence of 0": ([_word(1, confidence=Decimal(0))], {"confidence_out_of_range": 1}),
    # words: a key not in the schema's shape (ids padded to five digits)
    "word with a malformed key": ([_word(1, SK="RECEIPT#1#LINE#3#WORD#1")], {"malformed_key": 1}),
    # labels (each under its own key, so that all of them fit in one table at once)
    "label without word": ([_label(9, 9, "TAX")], {"label_without_word": 1}),
    "label on a bad word": (
        [_word(1, bounding_box=None), _label(3, 1, "TAX")],
        {"missing_box": 1, "label_on_bad_word": 1},
    ),
    "unknown label": ([_label(2, 1, "TOTAL")], {"unknown_label": 1}),
    "label whose key names no label": ([_label(2, 1, "TIP", SK=label_sk(1, 2, 1, "tip"))], {"malformed_key": 1}),
    "label without validation status": (
        [_label(2, 1, "CHANGE", validation_status=None)],
        {"missing_validation_status": 1},
    ),
    "validation status stored as a number": ([_label(2, 1, "REFUND", validation_status=Decimal(1))], {"wrong_type": 1}),
    "unknown validation status": (
        [_label(2, 1, "COUPON", validation_status="APPROVED")],
        {"unknown_validation_status": 1},
    ),
}


def _labels(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(label) else label for label in frame["label"]]


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_each_kind_of_malformed_item_is_counted_listed_and_loses_no_good_word(receipts_table, kind):
    bad, reasons = MALFORMED[kind]
    put_items(receipts_table, _labelled_receipt() + bad)

    result = read_receipt_words(ReadOptions(table=receipts_table, max_bad_share=0.5))

    assert dict(result.skipped) == reasons
    assert len(result.skipped_keys) == sum(reasons.values())
    for item in bad:  # each listed by its key (a label on a bad word, by its own key)
        assert any(listed.startswith(item_key(item) + ": ") for listed in result.skipped_keys), result.skipped_keys
    for reason in reasons:
        assert any(f": {reason}" in listed for listed in result.skipped_keys)
    assert result.frame["text"].tolist() == GOOD_TEXTS
    assert _labels(result.frame) == GOOD_LABELS


def test_a_configured_label_is_not_unknown(receipts_table):
    put_items(receipts_table, _labelled_receipt() + [_label(2, 1, "TOTAL")])

    result = read_receipt_words(ReadOptions(table=receipts_table, label_merges={"TOTAL": "AMOUNT"}))

    assert result.skipped_total == 0
    assert _labels(result.frame)[2] == "AMOUNT"


def test_the_same_item_read_twice_is_counted_as_a_duplicate_once():
    # a table holds one item per key, so only a read can deliver one twice: assembled as the reader does
    items = _labelled_receipt()
    by_key = {item["SK"]: item for item in items}
    word, label = by_key[word_sk(1, 1, 2)], by_key[label_sk(1, 1, 2, "MERCHANT_NAME")]  # MART and its label

    partial = assemble([*items, dict(word), dict(label)], ReadOptions(table="receipts"))

    assert partial.skipped == {"duplicate_item": 2}
    assert partial.columns["text"] == GOOD_TEXTS
    assert partial.columns["labels"][1] == ["MERCHANT_NAME"]


@pytest.mark.parametrize("strategy", ["gsi3", "scan"])
def test_every_kind_at_once_is_counted_alike_by_both_strategies(receipts_table, strategy):
    every = [item for kind, (bad, _) in MALFORMED.items() if kind != "label on a bad word" for item in bad]
    # one word id per item, so that each is its own word
    unique = []
    for number, item in enumerate(every, start=1):
        item = dict(item)
        if "#LABEL#" not in item["SK"] and "#LINE#00003#" in item["SK"]:
            item["SK"] = item["SK"].replace("#WORD#00001", f"#WORD#{number:05d}")
        unique.append(item)
    put_items(receipts_table, _labelled_receipt() + unique)

    result = read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy, max_bad_share=0.95))

    expected: dict[str, int] = {}
    for kind, (_, reasons) in MALFORMED.items():
        if kind != "label on a bad word":
            for reason, count in reasons.items():
                expected[reason] = expected.get(reason, 0) + count
    assert dict(result.skipped) == expected
    assert result.frame["text"].tolist() == GOOD_TEXTS


def test_over_the_threshold_the_asset_fails_naming_each_bad_item_and_its_problem(tmp_path, receipts_table):
    kinds = [
        "word without text",
        "NaN coordinate",
        "box wholly past the right edge",
        "unknown label",
        "label without word",
    ]
    bad = []
    for number, kind in enumerate(kinds, start=1):
        [item] = MALFORMED[kind][0]
        item = dict(item)
        if "#LABEL#" not in item["SK"]:
            item["SK"] = word_sk(1, 3, number)
        bad.append(item)
    put_items(receipts_table, _labelled_receipt() + bad)
    settings = _local_settings(tmp_path, receipts_table)

    strict = _materialize(settings, ingestion.raw_receipt_words, raise_on_error=False)

    assert not strict.success
    message = _failure_message(strict)
    assert receipts_table in message and "threshold" in message
    for item, kind in zip(bad, kinds, strict=True):
        [reason] = MALFORMED[kind][1]
        assert f"{item_key(item)}: {reason}" in message, (kind, message)
    assert "(x=1.2, y=0.5, width=0.1, height=0.02: off the receipt)" in message, "the problem's detail is named too"

    tolerant = _materialize(
        settings, ingestion.raw_receipt_words, {"ops": {"raw_receipt_words": {"config": {"max_bad_share": 0.9}}}}
    )
    metadata = _metadata(tolerant, "raw_receipt_words")
    assert metadata["skipped_items"] == len(bad)
    assert metadata["skipped_items_by_reason"] == {
        "missing_text": 1,
        "nan_coordinate": 1,
        "coordinate_out_of_range": 1,
        "unknown_label": 1,
        "label_without_word": 1,
    }
    assert sorted(key.split(": ")[0] for key in metadata["skipped_item_keys"]) == sorted(item_key(i) for i in bad)
    assert metadata["words"] == len(GOOD_TEXTS)
