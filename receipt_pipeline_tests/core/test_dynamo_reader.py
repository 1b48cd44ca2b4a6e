import datetime
import math
from collections import Counter

import pandas as pd
import pytest

from receipt_pipeline.core import dynamo_items
from receipt_pipeline.core.dynamo_reader import ReadOptions, ReceiptReadError, label_snapshot, read_receipt_words
from receipt_pipeline.core.dynamo_schema import LABEL_VOCABULARY, label_in_keys, word_sk
from receipt_pipeline.core.synthetic import expected_truth, iter_receipt_items, seed_synthetic
from receipt_pipeline_tests.aws_faults import THROTTLE, FaultProxy
from receipt_pipeline_tests.dynamo_items import box, label_item, put_items, receipt_item, word_item

IMAGE_A = "3f1d2c4b-0000-4000-8000-00000000000a"
IMAGE_B = "3f1d2c4b-0000-4000-8000-00000000000b"


def _moment(timestamp: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _labels(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(label) else label for label in frame["label"]]


def _labelled_receipt() -> list[dict]:
    """Image A, receipt 1: a merchant line and a total line; image B: PENDING labels only."""
    return [
        receipt_item(IMAGE_A, 1),
        dynamo_items.line_item(IMAGE_A, 1, 1, text="ACME MART", corners=dynamo_items.box_corners(0.1, 0.9, 0.45, 0.05)),
        # other item types of the partition, which the reader leaves alone
        dynamo_items.image_item(
            IMAGE_A,
            width=1200,
            height=3600,
            timestamp_added="2026-01-01T00:00:00",
            raw_s3_bucket="raw",
            raw_s3_key="raw/a.png",
            receipt_count=1,
        ),
        *dynamo_items.letter_items(
            IMAGE_A, 1, 1, 1, text="ACME", corners=dynamo_items.box_corners(0.1, 0.9, 0.2, 0.05)
        ),
        dynamo_items.spatial_analysis_item(
            IMAGE_A,
            1,
            1,
            1,
            from_label="MERCHANT_NAME",
            from_position=(0.1, 0.9),
            relationships=[],
            timestamp_added="2026-01-01T00:00:00",
        ),
        word_item(IMAGE_A, 1, 1, 1, "ACME", box(0.10, 0.90, 0.20, 0.05)),
        word_item(IMAGE_A, 1, 1, 2, "MART", box(0.35, 0.90, 0.20, 0.05)),
        word_item(IMAGE_A, 1, 2, 1, "TOTAL", box(0.10, 0.20, 0.20, 0.04)),
        word_item(IMAGE_A, 1, 2, 2, "12.50", box(0.70, 0.20, 0.20, 0.04)),
        label_item(IMAGE_A, 1, 1, 1, "MERCHANT_NAME"),
        label_item(IMAGE_A, 1, 1, 2, "MERCHANT_NAME"),
        label_item(IMAGE_A, 1, 2, 2, "GRAND_TOTAL", when="2026-02-01T00:00:00"),
        label_item(IMAGE_A, 1, 2, 2, "LINE_TOTAL", status="INVALID"),  # decoy: wrong status
        word_item(IMAGE_B, 1, 1, 1, "OTHER", box(0.1, 0.5)),
        label_item(IMAGE_B, 1, 1, 1, "MERCHANT_NAME", status="PENDING"),
    ]


@pytest.mark.parametrize("strategy", ["gsi3", "scan"])
def test_reads_labelled_receipts_flips_y_and_ignores_other_statuses(receipts_table, strategy):
    put_items(receipts_table, _labelled_receipt())

    result = read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy, read_parallelism=3))

    frame = result.frame
    assert result.receipts == 1
    assert set(frame["image_id"]) == {IMAGE_A}, "image B has only PENDING labels"
    assert frame["text"].tolist() == ["ACME", "MART", "TOTAL", "12.50"]
    assert _labels(frame) == ["MERCHANT_NAME", "MERCHANT_NAME", None, "GRAND_TOTAL"]
    assert [list(v) for v in frame["labels"]] == [["MERCHANT_NAME"], ["MERCHANT_NAME"], [], ["GRAND_TOTAL"]]
    acme = frame.iloc[0]
    # stored y-up box: bottom edge 0.90, height 0.05 -> y-down top 1 - 0.95, bottom 1 - 0.90
    assert (acme.x0, acme.x1) == pytest.approx((0.10, 0.30))
    assert (acme.y0, acme.y1) == pytest.approx((0.05, 0.10))
    assert frame.iloc[0].y0 < frame.iloc[2].y0, "the header must sit above the total once y points down"
    assert result.label_counts == {"MERCHANT_NAME": 2, "GRAND_TOTAL": 1}
    assert result.newest_label_timestamp == "2026-02-01T00:00:00"
    assert result.skipped_total == 0


def test_both_strategies_read_the_same_table(receipts_table):
    put_items(receipts_table, _labelled_receipt())
    by_index = read_receipt_words(ReadOptions(table=receipts_table, strategy="gsi3")).frame
    by_scan = read_receipt_words(ReadOptions(table=receipts_table, strategy="scan", read_parallelism=4)).frame
    assert by_index.equals(by_scan)


def test_merges_apply_before_the_allowlist_and_newest_label_wins(receipts_table):
    items = _labelled_receipt() + [
        label_item(IMAGE_A, 1, 2, 1, "SUBTOTAL", when="2026-03-01T00:00:00"),
        label_item(IMAGE_A, 1, 2, 1, "PAYMENT_METHOD", when="2026-01-01T00:00:00"),
    ]
    put_items(receipts_table, items)
    options = ReadOptions(
        table=receipts_table,
        label_merges={"GRAND_TOTAL": "AMOUNT", "SUBTOTAL": "AMOUNT", "LINE_TOTAL": "AMOUNT"},
        label_allowlist=("AMOUNT", "PAYMENT_METHOD"),
    )
    result = read_receipt_words(options)
    by_text = dict(zip(result.frame["text"], _labels(result.frame), strict=True))
    assert by_text["ACME"] is None, "MERCHANT_NAME is not in the allowlist"
    assert by_text["12.50"] == "AMOUNT"
    assert by_text["TOTAL"] == "AMOUNT", "the newer SUBTOTAL (merged) wins over PAYMENT_METHOD"
    assert result.words_with_conflicting_labels == 1
    labels_of_total = list(result.frame.loc[result.frame["text"] == "TOTAL", "labels"].iloc[0])
    assert labels_of_total == ["PAYMENT_METHOD", "SUBTOTAL"], "labels keeps every accepted label, unmerged"


def _bad_items() -> list[dict]:
    return [
        word_item(IMAGE_A, 1, 3, 1, None, box(0.1, 0.1)),  # missing text
        word_item(IMAGE_A, 1, 3, 2, "NOBOX", None),  # missing box
        word_item(IMAGE_A, 1, 3, 3, "FAR", box(1.2, 0.5, 0.1, 0.02)),  # wholly past the right edge
        word_item(IMAGE_A, 1, 3, 4, "NAN", {"x": "NaN", "y": 0.5, "width": 0.1, "height": 0.02}),
        label_item(IMAGE_A, 1, 9, 9, "TAX"),  # a label whose word does not exist
    ]


def test_bad_items_are_counted_by_reason_and_listed(receipts_table):
    put_items(receipts_table, _labelled_receipt() + _bad_items())
    result = read_receipt_words(ReadOptions(table=receipts_table, max_bad_share=0.5))
    assert result.skipped == {
        "missing_text": 1,
        "missing_box": 1,
        "coordinate_out_of_range": 1,
        "nan_coordinate": 1,
        "label_without_word": 1,
    }
    assert any("WORD#00003" in key and "coordinate_out_of_range" in key for key in result.skipped_keys)
    assert any("LABEL#TAX" in key for key in result.skipped_keys)
    assert len(result.frame) == 4, "the good words are all still there"
    assert all(math.isfinite(v) for v in result.frame[["x0", "y0", "x1", "y1"]].to_numpy().ravel())


def _overhanging_receipt(image: str) -> list[dict]:
    """A labelled receipt of 14 words whose crop cut through the price column and the bottom line, as the users'
    OCR writes them: boxes reaching to x = 1.33 and y = -0.016 (y up), the amount charged among them."""
    items = [receipt_item(image, 1)]
    for word in range(1, 13):
        items.append(word_item(image, 1, word, 1, f"ITEM{word}", box(0.1, 0.9 - 0.06 * word)))
    items += [
        word_item(image, 1, 13, 1, "24.99", box(0.9, 0.1, 0.43, 0.02)),  # x1 = 1.33
        word_item(image, 1, 14, 1, "THANKS", box(0.3, -0.016, 0.2, 0.02)),  # its bottom below the crop
        label_item(image, 1, 13, 1, "GRAND_TOTAL"),
        label_item(image, 1, 1, 1, "PRODUCT_NAME"),
    ]
    return items


def test_a_word_whose_box_overhangs_the_receipt_is_kept_clamped_and_counted_by_every_read(receipts_table):
    from receipt_pipeline.core.dynamo_reader import read_receipts_to_predict

    put_items(receipts_table, _overhanging_receipt(IMAGE_A))
    # the read for training, and the read for predictions, infer and proposals, at the default 5% threshold
    training = read_receipt_words(ReadOptions(table=receipts_table))
    predicting = read_receipts_to_predict(receipts_table, "all")
    for read in (training, predicting):
        frame = read.frame
        assert read.skipped_total == 0 and len(frame) == 14, "no word lost, no receipt refused"
        assert read.clamped_words == 2
        boxes = frame[["x0", "y0", "x1", "y1"]].to_numpy()
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        charged = frame[frame["text"] == "24.99"].iloc[0]
        assert (charged["x0"], charged["x1"]) == (pytest.approx(0.9), 1.0), "clamped to the crop's edge"
        thanks = frame[frame["text"] == "THANKS"].iloc[0]
        assert thanks["y1"] == 1.0 and thanks["y0"] == pytest.approx(1 - 0.004), "y up, flipped, then clamped"
    assert _labels(training.frame)[12] == "GRAND_TOTAL"


def test_bad_share_over_the_threshold_fails_naming_the_table(receipts_table):
    put_items(receipts_table, _labelled_receipt() + _bad_items())
    with pytest.raises(ReceiptReadError, match=rf"{receipts_table}.*5 of \d+ items are bad"):
        read_receipt_words(ReadOptions(table=receipts_table))  # default threshold 5%


def test_a_table_without_labelled_receipts_fails(receipts_table):
    put_items(
        receipts_table,
        [word_item(IMAGE_B, 1, 1, 1, "X", box(0.1, 0.5)), label_item(IMAGE_B, 1, 1, 1, "TAX", "PENDING")],
    )
    with pytest.raises(ReceiptReadError, match=rf"{receipts_table}.*no receipt has a label with status VALID"):
        read_receipt_words(ReadOptions(table=receipts_table))


def test_accepted_statuses_are_configurable(receipts_table):
    put_items(receipts_table, _labelled_receipt())
    result = read_receipt_words(ReadOptions(table=receipts_table, accepted_statuses=("VALID", "PENDING")))
    assert set(result.frame["image_id"]) == {IMAGE_A, IMAGE_B}


@pytest.mark.parametrize(("strategy", "target"), [("gsi3", "Query"), ("scan", "Scan")])
def test_throttled_reads_are_retried_and_lose_nothing(receipts_table, monkeypatch, strategy, target):
    put_items(receipts_table, _labelled_receipt())
    expected = read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy)).frame

    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle(f"DynamoDB_20120810.{target}", times=4)
        throttled = read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy, read_parallelism=2))

    assert proxy.injected[THROTTLE] == 4, "every injected throttle reached the reader"
    assert proxy.requests[f"DynamoDB_20120810.{target}"] > 4
    assert throttled.frame.equals(expected)


def test_a_seeded_table_round_trips_label_counts_and_flipped_coordinates(receipts_table):
    receipts, seed = 12, 5
    seed_synthetic(receipts_table, receipts, seed)
    truth = expected_truth(receipts, seed)

    result = read_receipt_words(ReadOptions(table=receipts_table, read_parallelism=4))

    frame = result.frame
    assert result.receipts == truth.labelled_receipts < receipts, "receipts without a VALID label are skipped"
    assert len(frame) == truth.words_in_labelled_receipts
    read_counts = Counter(label for labels in frame["labels"] for label in labels)
    assert read_counts == truth.valid_label_counts
    assert result.skipped_total == 0

    stored_boxes = {
        (item["PK"].removeprefix("IMAGE#"), item["SK"]): item["bounding_box"]
        for item in iter_receipt_items(receipts, seed)
        if item["TYPE"] == "RECEIPT_WORD"
    }
    for row in frame.itertuples():
        stored = stored_boxes[(row.image_id, word_sk(row.receipt_id, row.line_id, row.word_id))]
        x, y, w, h = (float(stored[k]) for k in ("x", "y", "width", "height"))
        flipped = (x, 1 - (y + h), x + w, 1 - y)
        clamped = tuple(min(max(v, 0.0), 1.0) for v in flipped)  # a box past a tight crop's edge, clamped
        assert (row.x0, row.y0, row.x1, row.y1) == pytest.approx(clamped, abs=1e-9)
    first_lines = frame[frame["line_id"] == 1].groupby(["image_id", "receipt_id"])["y0"].mean()
    last_lines = frame.groupby(["image_id", "receipt_id"])["y0"].max()
    assert (first_lines < last_lines).all(), "line 1 is the top of the receipt once y points down"


def test_the_label_snapshot_counts_valid_labels_and_finds_the_newest(receipts_table):
    receipts, seed = 8, 3
    seed_synthetic(receipts_table, receipts, seed)
    valid = [
        item
        for item in iter_receipt_items(receipts, seed)
        if item["TYPE"] == "RECEIPT_WORD_LABEL" and item["validation_status"] == "VALID"
    ]

    snapshot = label_snapshot(receipts_table)

    # as the users' writer leaves them: the label is in the keys, never an attribute
    assert not any("label" in item for item in valid)
    assert snapshot.labels == len(valid) == sum(expected_truth(receipts, seed).valid_label_counts.values())
    assert snapshot.per_label == dict(sorted(Counter(item["SK"].rsplit("#LABEL#", 1)[1] for item in valid).items()))
    assert set(snapshot.per_label) <= set(LABEL_VOCABULARY) and len(snapshot.per_label) > 5
    # the table mixes forms (offset or none, microseconds or none): the newest by time, not by string
    assert snapshot.newest_timestamp == max((item["timestamp_added"] for item in valid), key=_moment)
    assert label_snapshot(receipts_table).version == snapshot.version  # nothing changed, same version

    image = valid[0]["PK"].removeprefix("IMAGE#")
    put_items(receipts_table, [label_item(image, 1, 1, 1, "MERCHANT_NAME", when="2099-01-01T00:00:00")])
    newer = label_snapshot(receipts_table)
    assert newer.newest_timestamp == "2099-01-01T00:00:00" and newer.version != snapshot.version
    pending = label_snapshot(receipts_table, status="PENDING")
    assert pending.labels == sum(
        1 for i in iter_receipt_items(receipts, seed) if i.get("validation_status") == "PENDING"
    )


@pytest.mark.parametrize("strategy", ["gsi3", "scan"])
def test_the_read_counts_the_tables_valid_labels_in_the_pass_that_finds_the_data(receipts_table, strategy):
    seed_synthetic(receipts_table, 8, 4)
    alone = label_snapshot(receipts_table)

    result = read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy))

    counted = result.snapshot
    assert (counted.labels, counted.per_label, counted.newest_timestamp) == (
        alone.labels,
        alone.per_label,
        alone.newest_timestamp,
    )
    assert counted.version == alone.version and counted.labels > 0
    # GSI3: one index pass gives the image ids and the count, so the read costs no more requests than
    # the index pages and one query per image
    if strategy == "gsi3":
        images = result.frame["image_id"].nunique()
        index_pages = result.requests - images
        assert 1 <= index_pages <= 2, (result.requests, images)


def test_a_label_is_read_from_its_keys_and_an_attribute_called_label_is_not_read(receipts_table):
    stray = label_item(IMAGE_A, 1, 2, 1, "SUBTOTAL")
    stray["label"] = "TAX"  # no writer of the users' sets this; were it read, the word would be a TAX
    put_items(receipts_table, [*_labelled_receipt(), stray])

    result = read_receipt_words(ReadOptions(table=receipts_table))

    assert _labels(result.frame) == ["MERCHANT_NAME", "MERCHANT_NAME", "SUBTOTAL", "GRAND_TOTAL"]
    assert result.snapshot.per_label == {"GRAND_TOTAL": 1, "MERCHANT_NAME": 2, "SUBTOTAL": 1}
    assert label_snapshot(receipts_table).per_label == result.snapshot.per_label
    assert label_in_keys({"GSI3SK": stray["GSI3SK"]}) == label_in_keys({"SK": stray["SK"]}) == "SUBTOTAL"
