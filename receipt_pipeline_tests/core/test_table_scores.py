"""The table's receipts scored as their users read them: fields, line items, slices, the product-detail labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from receipt_pipeline.core import table_scores
from receipt_pipeline.core.bio import bio_tags

# one US receipt, a row per line: (text, label)
ROWS = [
    [("CORNER", "MERCHANT_NAME"), ("MART", "MERCHANT_NAME")],
    [("05/06/2025", "DATE"), ("7:42", "TIME"), ("PM", "TIME")],
    [("WHOLE", "PRODUCT_NAME"), ("MILK", "PRODUCT_NAME"), ("6.98", "LINE_TOTAL")],
    [("2", "QUANTITY"), ("@", None), ("3.49", "UNIT_PRICE")],
    [("BANANAS", "PRODUCT_NAME"), ("0.73", "LINE_TOTAL")],
    [("SUBTOTAL", None), ("7.71", "SUBTOTAL")],
    [("TOTAL", None), ("$7.71", "GRAND_TOTAL")],
]
LABELS = ["DATE", "GRAND_TOTAL", "LINE_TOTAL", "MERCHANT_NAME", "PRODUCT_NAME", "QUANTITY", "SUBTOTAL", "TIME",
          "UNIT_PRICE"]  # fmt: skip


def _layout(rows) -> tuple[table_scores.ReceiptLayout, list[str]]:
    words, labels, boxes, lines = [], [], [], []
    for line, row in enumerate(rows, start=1):
        for position, (text, label) in enumerate(row):
            words.append(text)
            labels.append(label)
            boxes.append([100 * position, 40 * line, 100 * position + 80, 40 * line + 25])
            lines.append(line)
    return table_scores.ReceiptLayout(words, np.asarray(boxes, float), np.asarray(lines)), bio_tags(labels)


def test_fields_and_items_are_scored_against_the_same_reading_of_the_valid_labels():
    layout, truth = _layout(ROWS)
    predicted = list(truth)
    predicted[layout.words.index("0.73")] = "O"  # the bananas' total missed: that item is wrong
    predicted[layout.words.index("PM")] = "O"  # the time read as 07:42, not 19:42
    keys = {"dynamo/a/00001": (truth, predicted), "dynamo/b/00001": (truth, truth), "sroie/c/00001": (truth, truth)}
    scores = table_scores.table_scores(
        {k: t for k, (t, _) in keys.items()}, {k: p for k, (_, p) in keys.items()}, dict.fromkeys(keys, layout), LABELS
    )
    assert scores["receipts"] == 2, "SROIE's receipts are scored against the strings SROIE states, not here"
    per_field = scores["fields"]["per_field"]
    assert set(per_field) == {"merchant", "date", "time", "subtotal", "total"}, "the fields the model has labels for"
    assert per_field["time"]["correct"] == 1 and per_field["date"]["correct"] == 2
    assert scores["field_counts"]["dynamo/a/00001"]["time"] == [0, 1, 1]
    # two items each; the bananas lose their total on one receipt: 3 of 4 right, that receipt no longer adds up
    assert scores["item_counts"] == {"dynamo/a/00001": [1, 2, 2], "dynamo/b/00001": [2, 2, 2]}
    assert scores["line_items"]["f1"] == pytest.approx(0.75)
    assert scores["line_items"]["items_not_adding_up"] == {"reference": 0, "predicted": 1}
    assert scores["fields"]["unreadable_references"] == dict.fromkeys(per_field, 0)

    groups = {"merchant: unseen": ["dynamo/a/00001", "sroie/c/00001"], "merchant: seen in train": ["dynamo/b/00001"]}
    figures = table_scores.slice_figures(scores, groups)
    assert figures["merchant: seen in train"] == {"table_receipts": 1, "field_f1": 1.0, "line_item_f1": 1.0}
    assert figures["merchant: unseen"]["table_receipts"] == 1 and figures["merchant: unseen"]["line_item_f1"] == 0.5

    def label(f1: float) -> dict:
        return {"precision": f1, "recall": f1, "f1": f1, "support": 4}

    details = table_scores.product_detail_scores(
        {"PRODUCT_NAME": label(1.0), "LINE_TOTAL": label(0.5), "DATE": label(0.1)}
    )
    assert set(details["labels"]) == {"PRODUCT_NAME", "LINE_TOTAL"} and details["macro_f1"] == 0.75
    assert table_scores.headline(scores, details) == {
        "table_field_f1": scores["fields"]["overall"]["f1"],
        "line_item_f1": 0.75,
        "product_detail_macro_f1": 0.75,
    }
    text = "\n".join(table_scores.markdown(scores, details, None))
    assert "The table's fields (2 receipts, dates read MDY)" in text and "Line items" in text


def test_a_model_without_item_labels_has_no_line_item_score_and_sroie_alone_no_table_score():
    layout, truth = _layout(ROWS)
    without_items = [t if "PRODUCT" not in t and "TOTAL" not in t else "O" for t in truth]
    scores = table_scores.table_scores(
        {"dynamo/a/00001": without_items}, {"dynamo/a/00001": without_items}, {"dynamo/a/00001": layout},
        ["DATE", "MERCHANT_NAME", "TIME"],
    )  # fmt: skip
    assert scores["line_items"] is None and "line_item_f1" not in table_scores.headline(scores, {})
    assert table_scores.table_scores({"sroie/c/00001": truth}, {}, {"sroie/c/00001": layout}, LABELS) is None
    assert table_scores.product_detail_scores({})["macro_f1"] is None


def test_layouts_are_read_from_the_splits_rows():
    rows = pa.table(
        {
            "key": ["dynamo/a/00001"],
            "words": [["TEA", "2.00"]],
            "boxes": pa.array([[[0, 0, 30, 10], [200, 0, 240, 10]]], type=pa.list_(pa.list_(pa.int16(), 4))),
            "line_ids": [[1, 1]],
        }
    )
    [layout] = table_scores.layouts_of(rows).values()
    assert layout.words == ["TEA", "2.00"] and layout.boxes.shape == (2, 4) and layout.line_ids.tolist() == [1, 1]
