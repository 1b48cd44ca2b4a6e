"""Synthetic receipts: written to the emulator over HTTP with real boto3 clients and read back."""

from __future__ import annotations

import datetime
import gc
import itertools
import math
import statistics
import tracemalloc
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config

from receipt_pipeline.core import aws, bio, dynamo_schema, local_aws, receipt_layouts, synthetic, word_table
from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble
from receipt_pipeline.core.dynamo_schema import (
    RECEIPT,
    RECEIPT_LINE,
    RECEIPT_WORD,
    RECEIPT_WORD_LABEL,
    parse_label,
    parse_word,
)
from receipt_pipeline.core.receipt_values import read_amount, read_quantity
from receipt_pipeline.core.synthetic import (
    SyntheticReceipt,
    WriteFailed,
    expected_truth,
    expected_valid_label_counts,
    iter_receipt_items,
    iter_synthetic_receipts,
    receipt_items,
    seed_synthetic,
    write_items,
)
from receipt_pipeline_tests.aws_faults import BATCH_WRITE_TARGET, PARTIAL_BATCH_WRITE, THROTTLE, FaultProxy

SEED = 7
RECEIPTS = 6
# what the OCR noise turns digits into, read back
_AMOUNT_LABELS = ("UNIT_PRICE", "LINE_TOTAL", "SUBTOTAL", "TAX", "TIP", "GRAND_TOTAL", "DISCOUNT", "COUPON")

ItemKey = tuple[str, str]


# ------------------------------------------------------------------------------------------ helpers


def _key(item: dict[str, Any]) -> ItemKey:
    return item["PK"], item["SK"]


def _paginated(operation: str, page_size: int = 250, **kwargs) -> tuple[list[dict[str, Any]], int]:
    """Every item an operation returns, deserialised, and the number of pages it took."""
    deserializer = TypeDeserializer()
    paginator = aws.client("dynamodb").get_paginator(operation)
    items, pages = [], 0
    for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": page_size}):
        pages += 1
        items.extend({name: deserializer.deserialize(value) for name, value in item.items()} for item in page["Items"])
    return items, pages


def _amounts_in_reading_order(words: Iterable[tuple[str, str | None, int | None]]) -> dict[Any, list[Decimal]]:
    """Amounts per label, in reading order, from ``(text, true label, item)``, read as the pipeline reads them
    (OCR's confusions repaired, ``3.00-`` negative); and per item, under ``("item", n, label)``."""
    amounts: dict[Any, list[Decimal]] = defaultdict(list)
    for text, label, item in words:
        if label in _AMOUNT_LABELS:
            value = Decimal(read_amount(text))
        elif label == "QUANTITY" and read_quantity(text) is not None:  # a weight's "lb" is its quantity's too
            value = Decimal(read_quantity(text))
        else:
            continue
        amounts[label].append(value)
        if item is not None:
            amounts[("item", item, label)].append(value)
    return amounts


def _assert_amounts_add_up(amounts: dict[Any, list[Decimal]], receipt: str) -> None:
    items = {key[1] for key in amounts if isinstance(key, tuple)}
    for item in items:
        [total] = amounts[("item", item, "LINE_TOTAL")]
        prices = amounts[("item", item, "QUANTITY")], amounts[("item", item, "UNIT_PRICE")]
        if all(prices):
            assert round(prices[0][0] * prices[1][0], 2) == total, receipt
    # the tax line, and the deposits printed under the items the users label TAX too
    [subtotal], tax = amounts["SUBTOTAL"], sum(amounts["TAX"])
    # the savings print as negative amounts; the total may be restated (BALANCE DUE, AMOUNT: $...)
    savings = sum(amounts["DISCOUNT"]) + sum(amounts["COUPON"])
    assert sum(amounts["LINE_TOTAL"]) + savings == subtotal and savings <= 0, receipt
    grand_total = amounts["GRAND_TOTAL"][0]
    assert set(amounts["GRAND_TOTAL"]) == {grand_total}, receipt
    assert subtotal + tax + sum(amounts["TIP"]) == grand_total, receipt
    assert 0 <= tax < subtotal, receipt


def _line_centre_y(item: dict[str, Any]) -> float:
    box = item["bounding_box"]
    return float(box["y"] + box["height"] / 2)


def _by_word(receipts: Iterable[SyntheticReceipt], attribute: str) -> dict[tuple, Any]:
    """A word attribute (``truth``, ``item``) per word key."""
    return {
        (r.image_id, r.receipt_id, line.line_id, word.word_id): getattr(word, attribute)
        for r in receipts
        for line in r.lines
        for word in line.words
    }


def _label_runs(words: Iterable[synthetic.SyntheticWord]) -> tuple[str | None, ...]:
    """The true labels along a line, a run of one label counted once (product names differ in length)."""
    return tuple(label for label, _ in itertools.groupby(word.truth for word in words if not word.is_noise))


def _cut(receipt: SyntheticReceipt) -> bool:
    return "boxes over the crop's edge" in receipt.features


def _weighed(receipt: SyntheticReceipt, item: int) -> bool:
    return "." in (receipt.facts.items[item].quantity or "")


def _layout(receipt: SyntheticReceipt) -> tuple:
    """What a merchant's template fixes, read off one of its receipts: the header's lines, the labels along the
    first line total's line of an item sold by the piece, and the words printed beside the subtotal, tax and
    total. What the customer bought (a weighed item, several of one, a long name) and paid with does not count."""
    lines = receipt.lines
    first_item = next(i for i, line in enumerate(lines) if any(w.truth == "PRODUCT_NAME" for w in line.words))
    header = tuple(_label_runs(line.words) for line in lines[:first_item] if line.words[0].truth != "QUANTITY")
    by_piece = next(
        (
            line.words
            for line in lines
            if any(
                w.truth == "LINE_TOTAL" and "." not in (receipt.facts.items[w.item].quantity or "") for w in line.words
            )
        ),
        # a butcher's receipt may have only weighed items
        next(line.words for line in lines if any(w.truth == "LINE_TOTAL" for w in line.words)),
    )
    item = tuple(label for label in _label_runs(by_piece) if label)
    # from the subtotal to the total: a deposit under an item is a TAX word too, but the customer's
    first = next(i for i, line in enumerate(lines) if any(word.truth == "SUBTOTAL" for word in line.words))
    last = next(i for i, line in enumerate(lines) if any(word.truth == "GRAND_TOTAL" for word in line.words))
    wording = tuple(
        # the OCR may split or merge an unlabelled word: the letters are the template's, not the spaces
        "".join(word.printed_text for word in line.words if word.truth is None and not word.is_noise)
        for line in lines[first : last + 1]
        if any(word.truth in ("SUBTOTAL", "TAX", "GRAND_TOTAL") for word in line.words)
    )
    return header, item, wording


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def seeded(aws_emulator):
    """A table holding RECEIPTS receipts of SEED, the stats of writing them, and every item read back."""
    table = f"receipts-synthetic-{uuid.uuid4().hex[:8]}"
    local_aws.create_receipts_table(table)
    client = aws.client("dynamodb")
    progress: list[synthetic.WriteStats] = []
    stats = seed_synthetic(table, RECEIPTS, SEED, on_progress=progress.append)
    items, pages = _paginated("scan", TableName=table)
    yield {"table": table, "stats": stats, "progress": progress, "items": items, "pages": pages}
    client.delete_table(TableName=table)


@pytest.fixture
def faults(aws_emulator, monkeypatch) -> FaultProxy:
    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


# ------------------------------------------------------------------------------- the seeded table


def test_the_table_holds_every_generated_item_exactly_once(seeded):
    generated = list(iter_receipt_items(RECEIPTS, SEED))
    read_back = seeded["items"]

    assert seeded["pages"] > 1  # the read really paginated
    assert len(read_back) == len(generated) == len({_key(item) for item in read_back})
    assert {_key(item): item for item in read_back} == {_key(item): item for item in generated}
    stats = seeded["stats"]
    assert stats.items == len(generated)
    assert stats.requests == math.ceil(len(generated) / synthetic.BATCH_SIZE)
    assert stats.retried_items == 0
    assert expected_truth(RECEIPTS, SEED).items == len(generated)
    # progress arrives per batch, in the caller's thread, and ends at the total
    assert [p.items for p in seeded["progress"]] == sorted(p.items for p in seeded["progress"])
    assert seeded["progress"][-1].items == len(generated)


# the attributes of each item type as the users' writer sets them (../shared/docs/dynamo-schema.md)
_GEOMETRY = {"text", "bounding_box", "top_left", "top_right", "bottom_left", "bottom_right", "angle_degrees",
             "angle_radians", "confidence"}  # fmt: skip
_SHAPES = {
    RECEIPT: {"PK", "SK", "TYPE", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI4PK", "GSI4SK", "width", "height",
              "timestamp_added", "raw_s3_bucket", "raw_s3_key", "top_left", "top_right", "bottom_left",
              "bottom_right", "sha256", "cdn_s3_bucket", "cdn_s3_key", "cdn_webp_s3_key", "cdn_avif_s3_key"},
    RECEIPT_LINE: {"PK", "SK", "TYPE", "GSI1PK", "GSI1SK", "GSI3PK", "GSI3SK", "GSI4PK", "GSI4SK",
                   "embedding_status", "is_noise", *_GEOMETRY},
    RECEIPT_WORD: {"PK", "SK", "TYPE", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "GSI4PK", "GSI4SK",
                   "embedding_status", "is_noise", "extracted_data", *_GEOMETRY},
    RECEIPT_WORD_LABEL: {"PK", "SK", "TYPE", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "GSI4PK",
                         "GSI4SK", "validation_status", "reasoning", "timestamp_added", "label_proposed_by",
                         "label_consolidated_from"},
}  # fmt: skip
_UNREAD_TYPES = {"IMAGE", "LINE", "WORD", "LETTER", "RECEIPT_LETTER", "RECEIPT_WORD_LABEL_SPATIAL_ANALYSIS"}


def _places(number: Decimal) -> int:
    return -number.as_tuple().exponent


def test_every_item_has_the_shape_the_users_writer_gives_it(seeded):
    by_type = defaultdict(list)
    for item in seeded["items"]:
        by_type[item["TYPE"]].append(item)

    assert set(by_type) == set(_SHAPES) | _UNREAD_TYPES
    assert len(by_type[RECEIPT]) == RECEIPTS
    for item_type, shape in _SHAPES.items():
        for item in by_type[item_type]:
            assert set(item) == shape, (item_type, set(item) ^ shape)
    for item in by_type[RECEIPT_WORD_LABEL]:
        # the label is in the keys only
        label = item["SK"].rsplit("#LABEL#", 1)[1]
        word = item["PK"] + "#" + item["SK"].rsplit("#LABEL#", 1)[0]
        assert item["GSI3PK"] == f"VALIDATION_STATUS#{item['validation_status']}"
        assert item["GSI3SK"] == f"{item['PK']}#{item['SK']}"
        assert item["GSI1PK"] == f"LABEL#{label}".ljust(40, "_") and len(item["GSI1PK"]) == 40
        assert item["GSI1SK"] == item["GSI2SK"] == word and item["GSI2PK"] == "RECEIPT"
        assert item["GSI4PK"] == word.split("#LINE#")[0] and item["GSI4SK"].startswith("4_LABEL#")
    for item in by_type[RECEIPT_WORD] + by_type[RECEIPT_LINE]:
        receipt = item["PK"] + "#" + item["SK"].split("#LINE#")[0]
        kind = "WORD" if item["TYPE"] == RECEIPT_WORD else "LINE"
        assert (item["GSI3PK"], item["GSI3SK"], item["GSI4PK"]) == (receipt, kind, receipt)
        assert item["GSI1PK"] == f"EMBEDDING_STATUS#{item['embedding_status']}"
        # numbers with the writer's many decimals
        assert {_places(v) for v in item["bounding_box"].values()} == {20}
        assert {_places(v) for corner in ("top_left", "bottom_right") for v in item[corner].values()} == {20}
        assert _places(item["angle_degrees"]) == _places(item["angle_radians"]) == 18
        assert _places(item["confidence"]) == 2
    for receipt in by_type[RECEIPT]:
        assert receipt["width"] == int(receipt["width"]) > 0 and receipt["height"] == int(receipt["height"]) > 0
        assert receipt["GSI4PK"] == f"{receipt['PK']}#{receipt['SK']}" and receipt["GSI4SK"] == "0_RECEIPT"
        assert {_places(v) for corner in ("top_left", "bottom_right") for v in receipt[corner].values()} == {18}
        assert receipt["top_left"]["y"] < receipt["bottom_left"]["y"]  # image coordinates: y points down
        datetime.datetime.fromisoformat(receipt["timestamp_added"])
        assert receipt["raw_s3_key"].endswith(".png") and len(receipt["sha256"]) == 64
        assert receipt["cdn_s3_key"] is None
    # the forms the table holds: with an offset and without, with microseconds and without
    stamps = [datetime.datetime.fromisoformat(item["timestamp_added"]) for item in by_type[RECEIPT_WORD_LABEL]]
    assert {stamp.tzinfo is None for stamp in stamps} == {True, False}
    assert {stamp.microsecond == 0 for stamp in stamps} == {True, False}
    # the other item types share the receipts' partitions
    receipt_partitions = {item["PK"] for item in by_type[RECEIPT]}
    assert {item["PK"] for item_type in _UNREAD_TYPES for item in by_type[item_type]} <= receipt_partitions


def test_words_and_labels_parse_with_the_readers_parsers(seeded):
    words = [parse_word(item) for item in seeded["items"] if item["TYPE"] == RECEIPT_WORD]
    labels = [parse_label(item) for item in seeded["items"] if item["TYPE"] == RECEIPT_WORD_LABEL]
    # the words past a tight crop's edge are the receipts' whose crop cuts the price column, and none is lost
    cut = {(r.image_id, r.receipt_id) for r in iter_synthetic_receipts(RECEIPTS, SEED) if _cut(r)}
    assert {word.key[:2] for word in words if word.clamped} <= cut
    assert {label.key for label in labels} <= {word.key for word in words}
    assert all(0 < word.confidence <= 1 and round(word.confidence, 2) == word.confidence for word in words)
    assert {label.label for label in labels} <= set(dynamo_schema.LABEL_VOCABULARY)
    assert {item["embedding_status"] for item in seeded["items"] if item["TYPE"] == RECEIPT_WORD} <= {
        "NONE", "PENDING", "SUCCESS", "FAILED", "NOISE"
    }  # fmt: skip


def test_receipts_have_40_to_400_words_and_the_amounts_in_their_text_add_up(seeded):
    words_by_receipt: dict[tuple, list[dict]] = defaultdict(list)
    for item in seeded["items"]:
        if item["TYPE"] == RECEIPT_WORD:
            words_by_receipt[parse_word(item).key[:2]].append(item)
    generated = list(iter_synthetic_receipts(RECEIPTS, SEED))
    truth, item_of = _by_word(generated, "truth"), _by_word(generated, "item")

    assert len(words_by_receipt) == RECEIPTS
    for receipt, items in words_by_receipt.items():
        assert 40 <= len(items) <= 400, receipt
        # the stored, noisy text, read in key order, with the labels the words really carry
        words = sorted((parse_word(item).key, item["text"]) for item in items)
        amounts = _amounts_in_reading_order((text, truth[key], item_of[key]) for key, text in words)
        assert 2 <= len(amounts["LINE_TOTAL"]) <= 40, receipt
        _assert_amounts_add_up(amounts, str(receipt))


def test_coordinates_are_normalised_with_y_up_and_the_top_line_highest(seeded):
    lines_by_receipt: dict[tuple, list[dict]] = defaultdict(list)
    for item in seeded["items"]:
        if item["TYPE"] in (RECEIPT_LINE, RECEIPT_WORD):
            box = item["bounding_box"]
            # a crop that cuts the price column leaves boxes past its right edge, by less than a word
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1.15 and box["width"] > 0
            assert box["y"] >= 0 and box["y"] + box["height"] <= 1 and box["height"] > 0
            assert item["top_left"]["y"] > item["bottom_left"]["y"]  # y points up
            assert item["top_right"]["x"] > item["top_left"]["x"]
            assert abs(float(item["angle_radians"]) - math.radians(item["angle_degrees"])) < 1e-7
            assert abs(item["angle_degrees"]) <= synthetic.MAX_SKEW_DEGREES
        if item["TYPE"] == RECEIPT_LINE:
            lines_by_receipt[(item["PK"], item["SK"].split("#LINE#")[0])].append(item)

    skews = set()
    for receipt, lines in lines_by_receipt.items():
        lines.sort(key=lambda item: item["SK"])
        centres = [_line_centre_y(line) for line in lines]
        assert centres == sorted(centres, reverse=True) and len(set(centres)) == len(centres), receipt
        assert lines[0]["bounding_box"]["y"] == max(line["bounding_box"]["y"] for line in lines)
        skews.add(lines[0]["angle_degrees"])
    assert len(skews) > 1 and any(skews)  # receipts are skewed, and not all alike


def test_statuses_are_mixed_with_valid_dominant_and_some_words_carry_two_labels(seeded):
    labels = [item for item in seeded["items"] if item["TYPE"] == RECEIPT_WORD_LABEL]
    statuses = Counter(item["validation_status"] for item in labels)
    labels_per_word = defaultdict(list)
    for item in labels:
        labels_per_word[parse_label(item).key].append(item["validation_status"])
    doubled = [sorted(s) for s in labels_per_word.values() if len(s) > 1]

    assert set(statuses) == set(dynamo_schema.VALIDATION_STATUSES)
    assert statuses["VALID"] > 0.6 * len(labels)
    assert statuses["VALID"] > 5 * max(count for status, count in statuses.items() if status != "VALID")
    assert len(doubled) >= RECEIPTS
    # usually a wrong label, rejected, beside the word's right one
    assert Counter(tuple(s) for s in doubled).most_common(1)[0][0] == ("INVALID", "VALID")


def test_the_valid_labels_in_the_table_are_the_expected_ground_truth(seeded):
    truth = expected_truth(RECEIPTS, SEED)
    valid, pages = _paginated(
        "query",
        page_size=50,
        TableName=seeded["table"],
        IndexName="GSI3",
        KeyConditionExpression="GSI3PK = :status",
        ExpressionAttributeValues={":status": {"S": dynamo_schema.validation_status_gsi3pk("VALID")}},
    )

    assert pages > 1
    assert Counter(dynamo_schema.label_in_keys(item) for item in valid) == truth.valid_label_counts
    assert truth.valid_label_counts == expected_valid_label_counts(RECEIPTS, SEED)
    assert [item["GSI3SK"] for item in valid] == sorted(item["GSI3SK"] for item in valid)
    labelled = {parse_label(item).key[:2] for item in valid}
    assert len(labelled) == truth.labelled_receipts
    words = [parse_word(i) for i in seeded["items"] if i["TYPE"] == RECEIPT_WORD]
    assert sum(word.key[:2] in labelled for word in words) == truth.words_in_labelled_receipts
    assert len({parse_label(item).key for item in valid}) == truth.words_with_valid_label


# --------------------------------------------------------------------------------- the generator


def test_a_share_of_receipts_has_no_valid_label_and_is_left_out_of_the_truth():
    receipts = list(iter_synthetic_receipts(60, SEED, unlabelled_share=0.3))
    without_valid = [r for r in receipts if not r.has_valid_label]
    proposed_only = [r for r in without_valid if any(w.labels for w in r.words())]
    truth = expected_truth(60, SEED, unlabelled_share=0.3)

    assert 6 <= len(without_valid) <= 30
    assert proposed_only and len(proposed_only) < len(without_valid)  # some labelled but not validated
    assert truth.labelled_receipts == 60 - len(without_valid)
    assert truth.words_in_labelled_receipts == sum(len(list(r.words())) for r in receipts if r.has_valid_label)
    assert all(r.has_valid_label for r in iter_synthetic_receipts(30, SEED, unlabelled_share=0.0))
    assert expected_valid_label_counts(10, SEED, unlabelled_share=1.0) == Counter()


def test_receipts_read_like_receipts():
    receipts = list(iter_synthetic_receipts(40, 3))
    labels = Counter(word.truth for receipt in receipts for word in receipt.words() if word.truth)
    noisy = [w for r in receipts for w in r.words() if w.text != w.printed_text]
    clean = [w for r in receipts for w in r.words() if w.text == w.printed_text and not w.is_noise]

    core = {"MERCHANT_NAME", "ADDRESS_LINE", "PHONE_NUMBER", "DATE", "TIME", "PRODUCT_NAME", "QUANTITY",
            "UNIT_PRICE", "LINE_TOTAL", "SUBTOTAL", "TAX", "GRAND_TOTAL", "PAYMENT_METHOD"}  # fmt: skip
    assert all(labels[label] >= 40 for label in core)  # on every receipt
    assert {"WEBSITE", "STORE_HOURS", "LOYALTY_ID", "DISCOUNT", "CHANGE"} <= set(labels)
    assert set(labels) <= set(dynamo_schema.LABEL_VOCABULARY)
    for receipt in receipts:
        first_line = receipt.lines[0]
        assert [w.printed_text for w in first_line.words if not w.is_noise] == receipt.merchant.split()
    # OCR noise: some words misread, and misread words are the less confident ones
    assert 0.005 < len(noisy) / (len(noisy) + len(clean)) < 0.1
    assert max(w.confidence for w in noisy) < min(w.confidence for w in clean)
    assert any(w.is_noise for r in receipts for w in r.words())


def test_each_merchant_prints_every_receipt_with_its_own_template_whatever_the_seed():
    layouts: dict[str, set[tuple]] = defaultdict(set)
    for seed in (1, 2):
        for receipt in iter_synthetic_receipts(200, seed):
            layouts[receipt.merchant].add(_layout(receipt))

    assert all(len(seen) == 1 for seen in layouts.values()), "a merchant printed two layouts"
    distinct = {layout for (layout,) in layouts.values()}
    assert len(distinct) >= 0.9 * len(layouts) >= 36


def test_each_merchant_prints_its_name_and_prices_in_the_same_places():
    name_left: dict[str, list[float]] = defaultdict(list)
    price_right: dict[str, list[float]] = defaultdict(list)
    for receipt in iter_synthetic_receipts(300, SEED):
        words = list(receipt.words())
        name_left[receipt.merchant].append(next(w.corners[0][0] for w in words if w.truth == "MERCHANT_NAME"))
        price_right[receipt.merchant].append(
            statistics.median(w.corners[1][0] for w in words if w.truth == "LINE_TOTAL")
        )

    for positions in (name_left, price_right):
        # x in 0..1 of the receipt: the print size, the margins and the skew of a photo move it a little
        within = statistics.mean(max(xs) - min(xs) for xs in positions.values())
        means = [statistics.mean(xs) for xs in positions.values()]
        assert max(means) - min(means) > 3 * within


def test_a_few_hundred_receipts_come_from_about_40_merchants_each_named_alike_on_all_its_receipts():
    receipts = list(iter_synthetic_receipts(200, SEED))
    frame = word_table.to_frame(assemble(iter_receipt_items(200, SEED), ReadOptions(table="t")).columns)
    split = bio.build_split([frame], bio.SplitOptions(strategy="merchant"))
    merchant_of = dict(zip(split.table.column("key").to_pylist(), split.table.column("merchant").to_pylist(),
                           strict=True))  # fmt: skip

    merchants = {receipt.merchant for receipt in receipts}
    every = {merchant for family in receipt_layouts.families() for merchant in family.merchants}
    assert 40 <= len(merchants) <= len(every)
    # the merchant split reads the VALID MERCHANT_NAME words as the table stores them, OCR noise and all
    for receipt in receipts:
        key = word_table.receipt_key(word_table.SOURCE_DYNAMO, receipt.image_id, receipt.receipt_id)
        if receipt.has_valid_label:
            assert merchant_of[key] == bio.normalised_merchant(receipt.merchant), key
    assert len(set(merchant_of.values())) == len(merchants)
    assert sum(split.record["merchants"].values()) == len(merchants)


def test_the_same_seed_gives_the_same_items_and_another_seed_others():
    first = list(iter_receipt_items(3, 11))

    assert first == list(iter_receipt_items(3, 11))
    assert list(iter_receipt_items(2, 11)) == first[: sum(1 for _ in iter_receipt_items(2, 11))]
    other = list(iter_receipt_items(3, 12))
    assert {item["PK"] for item in first}.isdisjoint(item["PK"] for item in other)
    assert [item.get("text") for item in first] != [item.get("text") for item in other]
    image_ids = [r.image_id for r in iter_synthetic_receipts(3, 11)]
    assert all(uuid.UUID(image_id).version == 5 for image_id in image_ids)


def test_many_receipts_stream_without_being_held():
    live_receipts = []
    word_counts, item_lines = [], []
    for receipt in iter_synthetic_receipts(2000, 99):
        words = list(receipt.words())
        word_counts.append(len(words))
        amounts = _amounts_in_reading_order((w.printed_text, w.truth, w.item) for w in words)
        item_lines.append(len(amounts["LINE_TOTAL"]))
        _assert_amounts_add_up(amounts, receipt.image_id)
        if receipt.index % 500 == 499:
            del words
            live_receipts.append(sum(isinstance(o, SyntheticReceipt) for o in gc.get_objects()))

    assert len(word_counts) == 2000
    assert live_receipts == [1, 1, 1, 1]  # only the one in hand
    assert min(word_counts) >= 40 and max(word_counts) <= 400
    assert min(item_lines) == 2 and max(item_lines) > 30 and max(item_lines) <= 40

    # held in a list, the items of 40 receipts take about 24 MB; streamed, a fraction of one
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_receipt_items(40, 99))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 40 * 100
    assert peak < 2_000_000


# ------------------------------------------------------------------------------- writing under load


def test_write_items_writes_every_item_once_through_partial_writes_and_throttling(receipts_table, faults):
    items = list(iter_receipt_items(2, 21))
    faults.partial_batch_writes(times=6, keep=7)
    faults.throttle(BATCH_WRITE_TARGET, times=1)

    stats = write_items(receipts_table, iter(items), concurrency=3)

    read_back, _ = _paginated("scan", TableName=receipts_table)
    assert len(read_back) == len(items)
    assert {_key(item) for item in read_back} == {_key(item) for item in items}
    assert faults.injected[PARTIAL_BATCH_WRITE] == 6 and faults.injected[THROTTLE] == 1
    assert stats.items == len(items)
    assert stats.retried_items == faults.deferred_items > 0
    assert stats.sdk_retries == 1  # botocore absorbed the throttling
    assert stats.requests > math.ceil(len(items) / synthetic.BATCH_SIZE)


def test_write_items_gives_up_after_max_retries_naming_the_table(receipts_table, faults):
    faults.partial_batch_writes(times=100, keep=0)

    with pytest.raises(WriteFailed, match=receipts_table) as raised:
        write_items(receipts_table, iter_receipt_items(1, 5), max_retries=2, concurrency=1, backoff_base_seconds=0.001)

    assert "after 2 retries" in str(raised.value)
    assert faults.injected[PARTIAL_BATCH_WRITE] == 3  # the first try and two retries of the first batch


def test_write_items_retries_throttling_that_outlasts_botocore(receipts_table, faults):
    items = list(iter_receipt_items(1, 8))[:60]
    # botocore gives up at once, and without adaptive mode's slow start after throttling
    client = boto3.session.Session().client(
        "dynamodb", config=Config(retries={"mode": "standard", "total_max_attempts": 1})
    )
    faults.throttle(BATCH_WRITE_TARGET, times=2)

    stats = write_items(receipts_table, items, client=client, concurrency=1, backoff_base_seconds=0.001)

    assert stats.throttled_requests == 2
    assert stats.items == 60
    assert len(_paginated("scan", TableName=receipts_table)[0]) == 60


def test_some_crops_cut_the_price_column_and_every_word_past_the_edge_is_read_clamped():
    receipts = list(iter_synthetic_receipts(300, 4))
    cut = [receipt for receipt in receipts if _cut(receipt)]
    assert 0.05 < len(cut) / len(receipts) < 0.2
    for receipt in receipts:
        overhang = [w for w in receipt.words() if max(x for x, _ in w.corners) > 1.0]
        assert bool(overhang) == _cut(receipt) or not overhang, receipt.merchant
        for item in receipt_items(receipt):
            if item["TYPE"] == RECEIPT_WORD:
                word = parse_word(item)  # never a bad item: kept, clamped into the receipt
                assert 0.0 <= word.x0 <= word.x1 <= 1.0
    assert any(max(x for x, _ in w.corners) > 1.0 for receipt in cut for w in receipt.words())


def test_a_label_noise_rate_makes_that_share_of_valid_labels_wrong_and_none_without_it():
    def wrong_share(noise: float) -> float:
        wrong = valid = 0
        for receipt in iter_synthetic_receipts(150, 8, label_noise=noise):
            for word in receipt.words():
                for label in word.labels:
                    if label.validation_status == "VALID" and word.truth:
                        valid += 1
                        wrong += label.label != word.truth
        return wrong / valid

    assert wrong_share(0.0) == 0.0
    assert 0.05 < wrong_share(0.1) < 0.12  # the merchant's name, always right, and words of no confusion aside
    with pytest.raises(ValueError, match="label_noise must be in 0..1"):
        next(iter_synthetic_receipts(1, 1, label_noise=2.0))
