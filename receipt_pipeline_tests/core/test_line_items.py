"""Line items assembled from words and boxes, in every layout the synthetic receipts print and a few they do not;
the check that line totals add up to the subtotal; item-level scores."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from receipt_pipeline.core import line_items, receipt_layouts, synthetic
from receipt_pipeline.core.bio import bio_tags
from receipt_pipeline.core.synthetic import iter_synthetic_receipts


def _receipt_words(receipt: synthetic.SyntheticReceipt):
    """Words, their true tags, boxes (0..1000, y down, as the split stores them), OCR lines and items."""
    words, labels, boxes, lines, items = [], [], [], [], []
    for line in receipt.lines:
        for word in line.words:
            xs, ys = [c[0] for c in word.corners], [c[1] for c in word.corners]
            words.append(word.text)
            labels.append(word.truth)
            boxes.append([min(xs) * 1000, (1 - max(ys)) * 1000, max(xs) * 1000, (1 - min(ys)) * 1000])
            lines.append(line.line_id)
            items.append(word.item)
    return words, bio_tags(labels), np.asarray(boxes), lines, items


def _receipts_by_layout(count: int = 1200) -> dict[tuple[str, bool], list[synthetic.SyntheticReceipt]]:
    found = defaultdict(list)
    for receipt in iter_synthetic_receipts(count, 11):
        template = synthetic._template(receipt.merchant)
        found[(template.item_style.name, template.name_wrap is not None)].append(receipt)
    return found


# every item style of every family, names wrapped and not (where a merchant of the family wraps them)
STYLES = sorted({style.name for family in receipt_layouts.families() for style in family.styles})
LAYOUTS = [(layout, wraps) for layout in STYLES for wraps in (False, True)]


@pytest.fixture(scope="module")
def by_layout():
    return _receipts_by_layout()


@pytest.mark.parametrize(("layout", "wraps"), LAYOUTS, ids=[f"{lay}{', wrapped' * w}" for lay, w in LAYOUTS])
def test_every_item_layout_the_synthetic_receipts_print_assembles_each_item_from_its_own_words(
    by_layout, layout, wraps
):
    receipts = by_layout[(layout, wraps)]
    if wraps and not receipts:
        pytest.skip(f"no merchant printing {layout} wraps its names")
    assert len(receipts) >= 3, f"no {layout} receipts to test"
    wrapped_names = 0
    for receipt in receipts:
        words, tags, boxes, lines, item_of = _receipt_words(receipt)
        items = line_items.assemble_items(words, tags, boxes, lines)
        expected = defaultdict(list)
        for index, item in enumerate(item_of):
            if item is not None:
                expected[item].append(index)
        assert [item.words for item in items] == [expected[n] for n in sorted(expected)], receipt.merchant
        for item, printed in zip(items, receipt.facts.items, strict=True):
            clean = all(words[i] == receipt_word.printed_text for i, receipt_word in _indexed(receipt, item.words))
            if clean:
                assert (item.product, item.quantity, item.unit_price, item.line_total) == (
                    printed.product,
                    printed.quantity,
                    printed.unit_price,
                    printed.line_total,
                )
            wrapped_names += len({lines[i] for i in item.words}) > (1 if printed.quantity is None else 2)
    if not wraps:
        assert wrapped_names == 0


def _indexed(receipt, indices):
    flat = [word for line in receipt.lines for word in line.words]
    return [(i, flat[i]) for i in indices]


def _row(y: float, *cells: tuple[str, str | None, float]) -> list[tuple[str, str | None, list[float]]]:
    """Words on one printed row at height ``y``: (text, label, left edge), each 8 units a character."""
    return [(text, label, [x, y, x + 8 * len(text), y + 12]) for text, label, x in cells]


def _assemble(*rows, tilt: float = 0.0, line_ids=None):
    cells = [cell for row in rows for cell in row]
    words = [text for text, _, _ in cells]
    tags = bio_tags([label for _, label, _ in cells])
    boxes = np.asarray([box for _, _, box in cells], dtype=float)
    boxes[:, [1, 3]] += tilt * boxes[:, [0]]  # a skewed photo: rows fall to the right
    return words, tags, line_items.assemble_items(words, tags, boxes, line_ids)


P, Q, U, T = "PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL"


def test_a_name_alone_then_its_quantity_price_and_total_on_the_next_row_is_one_item():
    _, _, items = _assemble(
        _row(0, ("BANANAS", P, 0)),
        _row(20, ("1.23", Q, 16), ("lb", None, 56), ("@", None, 80), ("0.59", U, 96), ("/lb", None, 136),
             ("0.73", T, 240)),
        _row(40, ("WHOLE", P, 0), ("MILK", P, 48)),
        _row(60, ("2", Q, 16), ("@", None, 32), ("3.49", U, 48), ("6.98", T, 240)),
    )  # fmt: skip
    assert [(i.product, i.quantity, i.unit_price, i.line_total) for i in items] == [
        ("BANANAS", "1.23", "0.59", "0.73"),
        ("WHOLE MILK", "2", "3.49", "6.98"),
    ]


def test_a_wrapped_name_joins_its_item_before_or_after_the_prices():
    _, _, items = _assemble(
        _row(0, ("ORGANIC", P, 0), ("MILK", P, 64), ("4.99", T, 240)),
        _row(20, ("1GAL", P, 24)),
        _row(40, ("SOURDOUGH", P, 0)),
        _row(60, ("LOAF", P, 24), ("5.49", T, 240)),
        _row(80, ("LATTE", P, 0), ("3.75", T, 240)),
    )
    assert [(i.product, i.line_total) for i in items] == [
        ("ORGANIC MILK 1GAL", "4.99"),
        ("SOURDOUGH LOAF", "5.49"),
        ("LATTE", "3.75"),
    ]


def test_a_quantity_line_goes_with_the_item_its_arithmetic_gives():
    _, _, items = _assemble(
        _row(0, ("APPLES", P, 0), ("1.99", T, 240)),
        _row(20, ("3", Q, 16), ("@", None, 32), ("0.50", U, 48)),  # 3 x 0.50 is the next item's total
        _row(40, ("LIMES", P, 0), ("1.50", T, 240)),
    )
    assert [(i.product, i.quantity, i.line_total) for i in items] == [("APPLES", None, "1.99"), ("LIMES", "3", "1.50")]
    _, _, items = _assemble(
        _row(0, ("APPLES", P, 0), ("1.50", T, 240)),
        _row(20, ("3", Q, 16), ("@", None, 32), ("0.50", U, 48)),  # and here the one above's
        _row(40, ("LIMES", P, 0), ("1.50", T, 240)),
    )
    assert [(i.product, i.quantity) for i in items] == [("APPLES", "3"), ("LIMES", None)]


def test_rows_are_read_across_a_skewed_photo_from_its_ocr_lines():
    rows = [
        _row(0, ("1", Q, 0), ("DBL-DBL", P, 16), ("6.10", T, 240)),
        _row(16, ("1", Q, 0), ("FRIES", P, 16), ("2.45", T, 240)),
        _row(32, ("2", Q, 0), ("SHAKE", P, 16), ("7.90", T, 240)),
    ]
    line_ids = [line for line, row in enumerate(rows) for _ in row]
    # across the width the skew moves a row by more than its height: without the skew the rows would mix
    _, _, items = _assemble(*rows, tilt=0.08, line_ids=line_ids)
    assert [(i.quantity, i.product, i.line_total) for i in items] == [
        ("1", "DBL-DBL", "6.10"),
        ("1", "FRIES", "2.45"),
        ("2", "SHAKE", "7.90"),
    ]


def test_an_item_is_as_confident_as_its_least_confident_word():
    words, tags, _ = _assemble(_row(0, ("TEA", P, 0), ("2.00", T, 240)))
    items = line_items.assemble_items(words, tags, np.asarray([[0, 0, 24, 12], [240, 0, 272, 12]]), None, [0.9, 0.4])
    assert items[0].confidence == 0.4
    assert line_items.assemble_items(["THANKS"], ["O"], np.asarray([[0, 0, 48, 12]])) == []


def test_a_receipt_whose_line_totals_do_not_add_up_is_flagged():
    items = [
        line_items.LineItem("TEA", None, None, "2.00", None, None, "2.00", [0], None),
        line_items.LineItem("CAKE", None, None, "3.50", None, None, "3.50", [1], None),
    ]
    assert line_items.check_items(items, {"subtotal": "5.50"}).status == "adds_up"
    # savings printed either side of the subtotal, with a trailing minus
    assert line_items.check_items(items, {"subtotal": "4.50"}, ["-1.00"]).status == "adds_up"
    assert line_items.check_items(items, {"subtotal": "5.50"}, ["-1.00"]).status == "adds_up"
    # no subtotal: the total less tax and tip
    assert line_items.check_items(items, {"total": "6.60", "tax": "0.44", "tip": "0.66"}).status == "adds_up"
    wrong = line_items.check_items(items, {"subtotal": "6.50", "total": "7.02"})
    assert wrong.flagged and wrong.to_dict() == {
        "status": "does_not_add_up",
        "items_sum": "5.50",
        "against": "subtotal",
        "expected": "6.50",
        "adjustments": None,
        "flagged": True,
    }
    assert line_items.check_items(items, {}).status == "unchecked"
    assert line_items.check_items([], {"subtotal": "1.00"}).status == "unchecked"
    assert line_items.adjustment_amounts(
        ["SAVE", "1.00-", "COUPON", "(0.50)"], ["O", "B-DISCOUNT", "O", "B-COUPON"]
    ) == [
        "-1.00",
        "-0.50",
    ]


def test_items_count_when_their_product_text_and_line_total_match():
    def item(product, total):
        return line_items.LineItem(product, None, None, total, None, None, total, [], None)

    truth = [item("WHOLE MILK", "3.49"), item("BANANAS", "0.73"), item("BANANAS", "0.73")]
    predicted = [item("whole  milk", "3.49"), item("BANANAS", "0.73"), item("BANANAS", "0.37"), item("BAG", "0.10")]
    assert line_items.item_counts(truth, predicted) == [2, 4, 3]
    scores = line_items.item_scores({"a": [2, 4, 3], "b": [1, 1, 1]})
    assert scores["precision"] == pytest.approx(3 / 5) and scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(2 * 3 / 9) and scores["receipts"] == 2
