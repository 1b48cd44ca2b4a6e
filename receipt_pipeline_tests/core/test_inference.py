"""Predictions on receipts nobody labelled: which receipts are read, one label per word whatever the windows,
and the fields normalised with the confidence of their weakest word."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from receipt_pipeline.core import bio, fields, inference, promotion, storage, word_table
from receipt_pipeline.core.dynamo_reader import ReceiptReadError, read_receipts_to_predict
from receipt_pipeline.core.training import weights_digest
from receipt_pipeline_tests.dynamo_items import box, label_item, put_items, receipt_item, word_item
from receipt_pipeline_tests.training_data import synthetic_words

UNLABELLED, VALIDATED, PENDING_ONLY, NO_WORDS = (
    "aaaaaaaa-0000-4000-8000-000000000001",
    "bbbbbbbb-0000-4000-8000-000000000002",
    "cccccccc-0000-4000-8000-000000000003",
    "dddddddd-0000-4000-8000-000000000004",
)
LINES = [["COFFEE", "HOUSE"], ["12", "MAIN", "ST"], ["05/03/2024"], ["TOTAL", "RM9.50"]]


def receipt_items(image: str, receipt: int = 1, added: str = "2026-01-01T00:00:00") -> list[dict]:
    """A receipt of four lines (top to bottom: y falls) with its words, added at ``added``."""
    items = [receipt_item(image, receipt) | {"timestamp_added": added}]
    for line, words in enumerate(LINES, start=1):
        for word, text in enumerate(words, start=1):
            items.append(word_item(image, receipt, line, word, text, box(0.1 * word, 0.9 - 0.1 * line)))
    return items


@pytest.fixture
def four_receipts(receipts_table) -> str:
    put_items(
        receipts_table,
        [
            *receipt_items(UNLABELLED, added="2026-02-01T10:00:00+00:00"),
            *receipt_items(VALIDATED, added="2026-01-01T00:00:00"),
            label_item(VALIDATED, 1, 4, 2, "GRAND_TOTAL", status="VALID"),
            label_item(VALIDATED, 1, 1, 1, "MERCHANT_NAME", status="INVALID"),
            *receipt_items(PENDING_ONLY, added="2026-03-01T00:00:00.123456"),
            label_item(PENDING_ONLY, 1, 1, 1, "MERCHANT_NAME", status="PENDING"),
            receipt_item(NO_WORDS, 1),
        ],
    )
    return receipts_table


def _receipts(read) -> set[str]:
    return {image for image in read.frame["image_id"].unique()}


def test_the_scope_chooses_the_receipts_and_each_word_keeps_only_its_valid_labels(four_receipts):
    unlabelled = read_receipts_to_predict(four_receipts, "unlabelled")
    # a receipt with only unvalidated labels has no ground truth: it is predicted
    assert _receipts(unlabelled) == {UNLABELLED, PENDING_ONLY}
    assert unlabelled.receipts_in_table == 4 and unlabelled.receipts_chosen == 3 and unlabelled.receipts == 2
    assert unlabelled.receipts_without_words == [f"dynamo/{NO_WORDS}/00001"]
    assert unlabelled.frame["label"].isna().all(), "nothing read for prediction is training data"
    assert all(len(labels) == 0 for labels in unlabelled.frame["labels"])
    # reading order, and y flipped once: the first line is at the top
    first = unlabelled.frame[unlabelled.frame["image_id"] == UNLABELLED]
    assert first["text"].tolist() == [word for line in LINES for word in line]
    assert first["y0"].is_monotonic_increasing

    everything = read_receipts_to_predict(four_receipts, "all")
    assert _receipts(everything) == {UNLABELLED, VALIDATED, PENDING_ONLY}
    validated = everything.frame[everything.frame["image_id"] == VALIDATED].set_index(["line_id", "word_id"])
    assert list(validated.loc[(4, 2), "labels"]) == ["GRAND_TOTAL"]
    assert list(validated.loc[(1, 1), "labels"]) == [], "an INVALID label is no label"

    # times compared as times, whatever their form; undated receipts are read rather than missed
    since = read_receipts_to_predict(four_receipts, "since_last_run", since="2026-02-15T00:00:00Z")
    assert _receipts(since) == {PENDING_ONLY} and since.undated_receipts == 0
    assert read_receipts_to_predict(four_receipts, "since_last_run").receipts == 3, "the first run reads all"

    one = read_receipts_to_predict(four_receipts, receipts=[(VALIDATED, 1)])
    assert _receipts(one) == {VALIDATED} and one.receipts_in_table == 1 and one.scope == "receipts"


def test_the_prediction_read_counts_bad_words_and_fails_past_the_threshold(receipts_table):
    items = receipt_items(UNLABELLED)
    del items[1]["text"]
    put_items(receipts_table, items)
    with pytest.raises(ReceiptReadError, match="1 of 8 items of the receipts to predict on are bad"):
        read_receipts_to_predict(receipts_table)
    read = read_receipts_to_predict(receipts_table, max_bad_share=0.5)
    assert read.skipped == {"missing_text": 1} and len(read.frame) == 7
    assert read.skipped_keys[0].startswith(f"IMAGE#{UNLABELLED}|RECEIPT#00001#LINE#00001#WORD#00001")


def test_fields_are_normalised_and_as_confident_as_their_weakest_word():
    words = ["COFFEE", "HOUSE", "12", "MAIN", "ST", "05/03/2024", "SUBTOTAL", "9.00", "TOTAL", "RM9.50", "THANKS"]
    tags = ["B-MERCHANT_NAME", "I-MERCHANT_NAME", "B-ADDRESS_LINE", "I-ADDRESS_LINE", "I-ADDRESS_LINE", "B-DATE",
            "O", "B-SUBTOTAL", "O", "B-GRAND_TOTAL", "O"]  # fmt: skip
    confidence = np.array([0.9, 0.6, 0.8, 0.8, 0.7, 0.95, 0.99, 0.5, 0.99, 0.97, 0.99])
    group = pd.DataFrame({"text": words, "source": "dynamo", "image_id": UNLABELLED, "receipt_id": 1})
    labels = ["ADDRESS_LINE", "DATE", "GRAND_TOTAL", "MERCHANT_NAME", "SUBTOTAL", "TAX"]
    row = inference.receipt_row("k", group, tags, confidence, labels)
    assert row["merchant"] == "COFFEE HOUSE" and row["merchant_confidence"] == 0.6
    assert row["address"] == "12 MAIN ST" and row["address_confidence"] == 0.7
    # a table receipt is a US one: month first, unless the deployment says its receipts print the day first
    assert row["date"] == "2024-05-03" and row["date_text"] == "05/03/2024" and row["date_confidence"] == 0.95
    assert inference.receipt_row("k", group, tags, confidence, labels, "DMY")["date"] == "2024-03-05"
    assert row["total"] == "9.50" and row["total_text"] == "RM9.50" and row["total_confidence"] == 0.97
    assert row["subtotal"] == "9.00" and row["subtotal_confidence"] == 0.5
    # the model has a TAX label but found none; TIP it does not know at all
    assert row["tax"] is None and row["tax_confidence"] is None and row["tip"] is None
    assert row["items"] == 0 and row["items_check"] == "unchecked" and not row["items_flagged"]
    assert row["confidence"] == 0.6, "the weakest key field"
    assert row["words"] == 11 and row["entity_words"] == 8

    unreadable = inference.receipt_row("k", group, ["O"] * 3 + ["B-DATE"] + ["O"] * 7, confidence, labels)
    assert unreadable["date"] is None and unreadable["date_text"] == "MAIN"
    assert fields.value("date", "JAN") is None and fields.value("total", "TOTAL") is None
    assert unreadable["confidence"] == 0.0, "a key field not found puts the receipt first in the queue"


def test_the_review_queue_is_least_confident_first():
    receipts = pd.DataFrame(
        {
            "key": ["a", "b", "c", "d"],
            "confidence": [0.9, 0.2, None, 0.2],
            "mean_confidence": [0.9, 0.8, 0.5, 0.3],
        }
    )
    ordered = inference.with_review_priority(receipts)
    assert ordered["key"].tolist() == ["c", "d", "b", "a"]
    assert ordered["review_priority"].tolist() == [1, 2, 3, 4]


def _printed_receipt(image_id: str, rows: list[list[tuple[str, str | None]]]) -> pd.DataFrame:
    """A word table of one receipt: each row a printed line of (text, label), words 10 characters apart."""
    columns: dict[str, list] = {name: [] for name in word_table.COLUMNS}
    for line_id, row in enumerate(rows, start=1):
        for word_id, (text, label) in enumerate(row, start=1):
            x, y = 0.05 + 0.09 * (word_id - 1), 0.05 + 0.04 * (line_id - 1)
            values = dict(source="dynamo", source_split=None, image_id=image_id, receipt_id=1, line_id=line_id,
                          word_id=word_id, text=text, x0=x, y0=y, x1=x + 0.07, y1=y + 0.025, confidence=0.99,
                          labels=[label] if label else [], label=label)  # fmt: skip
            for name, value in values.items():
                columns[name].append(value)
    return word_table.to_frame(columns)


def test_line_items_are_read_checked_against_the_subtotal_and_a_receipt_that_does_not_add_up_goes_first():
    rows = [
        [("CORNER", "MERCHANT_NAME"), ("MART", "MERCHANT_NAME")],
        [("07/28/2025", "DATE"), ("7:42", "TIME"), ("PM", "TIME")],
        [("WHOLE", "PRODUCT_NAME"), ("MILK", "PRODUCT_NAME"), ("6.98", "LINE_TOTAL")],
        [("2", "QUANTITY"), ("@", None), ("3.49", "UNIT_PRICE")],
        [("BANANAS", "PRODUCT_NAME"), ("0.73", "LINE_TOTAL")],
        [("SUBTOTAL", None), ("7.71", "SUBTOTAL")],
        [("TOTAL", None), ("$7.71", "GRAND_TOTAL")],
    ]
    labels = ["DATE", "GRAND_TOTAL", "LINE_TOTAL", "MERCHANT_NAME", "PRODUCT_NAME", "QUANTITY", "SUBTOTAL", "TIME",
              "UNIT_PRICE"]  # fmt: skip
    good = _printed_receipt("aaaaaaaa-0000-4000-8000-000000000001", rows)
    # the same receipt with its second item's total misread: 7.71 is no longer the sum
    bad = _printed_receipt("aaaaaaaa-0000-4000-8000-000000000002", rows[:4] + [rows[4][:1] + [("0.78", "LINE_TOTAL")]]
                           + rows[5:])  # fmt: skip
    read = {}
    for frame in (good, bad):
        key = word_table.receipt_key("dynamo", frame["image_id"].iloc[0], 1)
        tags = bio.bio_tags([label if isinstance(label, str) else None for label in frame["label"]])
        read[key] = inference.read_receipt(key, frame, tags, np.full(len(frame), 0.9), labels)
    (good_row, good_items), (bad_row, _) = read.values()
    assert [(i["product"], i["quantity"], i["unit_price"], i["line_total"], i["line_ids"]) for i in good_items] == [
        ("WHOLE MILK", "2", "3.49", "6.98", [3, 4]),
        ("BANANAS", None, None, "0.73", [5]),
    ]
    assert good_row["date"] == "2025-07-28" and good_row["time"] == "19:42" and good_row["total"] == "7.71"
    assert good_row["items"] == 2 and good_row["items_check"] == "adds_up" and not good_row["items_flagged"]
    assert bad_row["items_check"] == "does_not_add_up" and bad_row["items_sum"] == "7.76"
    assert bad_row["items_expected"] == "subtotal 7.71" and bad_row["items_flagged"]

    # the one that does not add up goes first, even when it is the more confident
    table = pd.DataFrame([good_row, {**bad_row, "confidence": 0.99}], columns=inference.receipt_columns()[:-1])
    ordered = inference.with_review_priority(table)
    assert ordered["key"].tolist() == [bad_row["key"], good_row["key"]]

    words = pd.concat([good, bad], ignore_index=True).assign(tag="O", key="")
    items = pd.DataFrame([item for _, rows_of in read.values() for item in rows_of], columns=inference.ITEM_COLUMNS)
    predictions = inference.Predictions(words, ordered, "v1", items)
    summary = inference.receipt_summary(predictions, good_row["key"])
    assert [item["product"] for item in summary["line_items"]] == ["WHOLE MILK", "BANANAS"]
    assert summary["line_items"][0]["line_ids"] == [3, 4]
    assert summary["items_check"] == {"status": "adds_up", "items_sum": "7.71", "expected": "subtotal 7.71",
                                      "flagged": False}  # fmt: skip


def _long_receipt(words: pd.DataFrame) -> pd.DataFrame:
    """Copies of one receipt's lines, one after the other, to 600 words: a receipt several windows long."""
    first = words[words["image_id"] == words["image_id"].iloc[0]]
    lines = int(first["line_id"].max())
    copies = [first.assign(line_id=first["line_id"] + lines * copy) for copy in range(-(-600 // len(first)))]
    return pd.concat(copies, ignore_index=True)


def test_every_word_gets_one_label_and_confidence_whatever_the_windows_and_chunks(small_production_model):
    loaded = inference.load_model(str(small_production_model))
    assert loaded.version == weights_digest(small_production_model)
    assert loaded.manifest is not None and loaded.tags[0] == "O"
    words = synthetic_words(3, seed=11)
    long = _long_receipt(words).assign(image_id="eeeeeeee-0000-4000-8000-000000000005")
    table = pd.concat([words, long], ignore_index=True)

    predicted = inference.predict_words(loaded, table)
    assert predicted.windows >= table["image_id"].nunique() + 1, "the long receipt takes several windows"
    assert len(predicted.words) == len(table) and predicted.words["confidence"].between(0, 1).all()
    ordered = table.sort_values(["image_id", "receipt_id", "line_id", "word_id"], kind="stable")
    keys = ["image_id", "receipt_id", "line_id", "word_id"]
    assert predicted.words[keys].sort_values(keys).to_numpy().tolist() == ordered[keys].to_numpy().tolist()
    labelled = predicted.words["label"].notna()
    assert (predicted.words.loc[labelled, "tag"].str[2:] == predicted.words.loc[labelled, "label"]).all()
    assert set(predicted.words["label"].dropna()) <= set(loaded.labels)
    assert sum(predicted.labels_per_kind.values()) == predicted.entity_words == int(labelled.sum())
    receipts = len(table.groupby(["image_id", "receipt_id"]))
    assert predicted.receipts["review_priority"].tolist() == list(range(1, receipts + 1))
    assert list(predicted.receipts.columns) == inference.receipt_columns()
    assert list(predicted.items.columns) == inference.ITEM_COLUMNS
    per_receipt = predicted.items.groupby("key").size()
    assert all(per_receipt.get(row.key, 0) == row.items for row in predicted.receipts.itertuples())

    chunked = inference.predict_words(loaded, table, chunk_receipts=1, batch_size=3)
    pd.testing.assert_frame_equal(chunked.words.drop(columns="confidence"), predicted.words.drop(columns="confidence"))
    assert np.allclose(chunked.words["confidence"], predicted.words["confidence"], atol=1e-5)
    assert inference.predict_words(loaded, word_table.empty_frame()).words.empty


def test_a_production_model_on_s3_loads_and_a_later_promotion_replaces_the_cached_copy(
    small_production_model, artifacts_bucket, tmp_path, monkeypatch
):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("RECEIPT_PIPELINE_MODEL_CACHE", str(tmp_path / "cache"))
    root = promotion.production_root(f"s3://{artifacts_bucket}")
    promotion.promote(str(small_production_model), root, promotion.current_production(str(small_production_model)))
    first = inference.load_model(root)
    assert first.version == weights_digest(small_production_model)

    # another model: the same with its classifier moved, promoted to the same place
    other = tmp_path / "other"
    other.mkdir()
    for path in small_production_model.iterdir():
        if path.name != "model.safetensors":
            (other / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(small_production_model / "model.safetensors"))
    weights["classifier.bias"] = weights["classifier.bias"] + 1.0
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    promotion.promote(str(other), root, {"checkpoint": {"version": weights_digest(other), "path": str(other)}})
    second = inference.load_model(root)
    assert second.version == weights_digest(other) == weights_digest(second.folder) != first.version
    assert storage.exists(storage.join(root, "production.json"))
