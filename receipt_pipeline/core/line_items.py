"""Line items assembled from tagged words and their boxes: a product's name, quantity, unit price and line total.

Receipts print an item in several ways: on one row (``2 BANANAS @ 0.59 1.18``, or the quantity and the unit
price in columns), on two (the name and its total, then ``2 @ 0.59`` under it; or the name alone, then the
quantity, price and total), with a name too long for its column wrapped onto the next row. Words are grouped
into visual rows by their boxes (the receipt's skew, read from its OCR lines, taken out first), and each row's
item words (``PRODUCT_NAME``, ``QUANTITY``, ``UNIT_PRICE``, ``LINE_TOTAL``) into a fragment; fragments are joined
top to bottom into items:

- a fragment whose fields the open item lacks completes it (a name, then its prices; a name and total, then the
  quantity line), except a quantity line whose arithmetic (quantity times unit price) gives the next item's total
  and not the open one's, which goes with the next item;
- a name alone after a name alone, or a name on the row of the prices that follow a name alone, wraps the name;
- a name alone after a priced item wraps that item's name when it is indented under it or when a quantity line
  without a total follows it; else it is the next item's name.

An item's confidence is its least confident word's. A receipt whose line totals do not add up to its subtotal
(or, with no subtotal, to its total less tax and tip) is flagged: :func:`check_items`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal

import numpy as np

from receipt_pipeline.core.fields import OUTSIDE, label_spans, normalised_text
from receipt_pipeline.core.receipt_values import amount_cents, read_amount, read_quantity

# the item's fields by the label that tags their words
ITEM_LABELS = {
    "PRODUCT_NAME": "product",
    "QUANTITY": "quantity",
    "UNIT_PRICE": "unit_price",
    "LINE_TOTAL": "line_total",
}
PRODUCT_DETAIL_LABELS = tuple(ITEM_LABELS)
# amounts that take a receipt's items to its subtotal: savings and coupons, printed negative or not
ADJUSTMENT_LABELS = ("DISCOUNT", "COUPON")
_PRICES = frozenset({"quantity", "unit_price", "line_total"})


@dataclass(frozen=True)
class LineItem:
    product: str | None  # the name's words, joined in reading order
    quantity: str | None  # read_quantity; None where absent or unreadable (see the *_text)
    unit_price: str | None  # read_amount
    line_total: str | None
    quantity_text: str | None
    unit_price_text: str | None
    line_total_text: str | None
    words: list[int]  # the indices of its words, in reading order
    confidence: float | None  # its least confident word's; None without confidences

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def match_key(self) -> tuple[str, str]:
        """What makes two readings of an item the same item: its product text (whitespace and case ignored) and
        its line total as an amount."""
        return normalised_text(self.product or ""), self.line_total or normalised_text(self.line_total_text or "")


# ------------------------------------------------------------------------------------------ rows


def visual_rows(boxes: np.ndarray, line_ids: Sequence[int] | None = None) -> np.ndarray:
    """A row number per word (0 at the top): words whose vertical centres, once the receipt's skew is taken out,
    lie within half a word's height of a row's. ``boxes`` are (n, 4) x0, y0, x1, y1 with y pointing down."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    heights = np.abs(boxes[:, 3] - boxes[:, 1])
    level = centre_y - _skew(centre_x, centre_y, line_ids) * centre_x
    positive = heights[heights > 0]
    tolerance = 0.5 * float(np.median(positive)) if len(positive) else 1e-9
    rows = np.zeros(len(boxes), dtype=np.int64)
    row, row_levels = 0, []
    for index in np.argsort(level, kind="stable"):
        if row_levels and level[index] - np.mean(row_levels) > tolerance:
            row, row_levels = row + 1, []
        rows[index] = row
        row_levels.append(level[index])
    return rows


def _skew(x: np.ndarray, y: np.ndarray, line_ids: Sequence[int] | None) -> float:
    """The receipt's slope (dy per dx), the median over its OCR lines of two words or more, each line's own fit."""
    if line_ids is None:
        return 0.0
    line_ids = np.asarray(line_ids)
    slopes = []
    for line in np.unique(line_ids):
        on_line = line_ids == line
        spread = np.ptp(x[on_line]) if on_line.sum() > 1 else 0.0
        if spread > 0:
            slopes.append(np.polyfit(x[on_line], y[on_line], 1)[0])
    return float(np.median(slopes)) if slopes else 0.0


# ------------------------------------------------------------------------------------------ items


def assemble_items(
    words: Sequence[str],
    tags: Sequence[str],
    boxes: np.ndarray,
    line_ids: Sequence[int] | None = None,
    confidence: Sequence[float] | None = None,
) -> list[LineItem]:
    """The receipt's line items, top to bottom, from its words' tags and boxes (see the module's rules)."""
    if not (len(words) == len(tags) == len(boxes)):
        raise ValueError(f"{len(words)} words, {len(tags)} tags and {len(boxes)} boxes")
    if not any(tag != OUTSIDE and tag[2:] in ITEM_LABELS for tag in tags):
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows = visual_rows(boxes, line_ids)
    fragments: dict[int, dict[str, list[int]]] = {}
    for index in sorted(range(len(tags)), key=lambda i: (rows[i], boxes[i, 0])):
        label = tags[index][2:] if tags[index] != OUTSIDE else None
        if label in ITEM_LABELS:
            fragments.setdefault(int(rows[index]), {}).setdefault(ITEM_LABELS[label], []).append(index)
    ordered = [fragments[row] for row in sorted(fragments)]
    heights = np.abs(boxes[:, 3] - boxes[:, 1])
    indent = 0.5 * float(np.median(heights[heights > 0])) if (heights > 0).any() else 0.0
    # where this receipt's item rows start (a speck before one shifts that one alone)
    priced = [_left(fragment, boxes) for fragment in ordered if "line_total" in fragment]
    column = float(np.median(priced)) if priced else float("inf")
    joined: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] | None = None
    for position, fragment in enumerate(ordered):
        following = ordered[position + 1] if position + 1 < len(ordered) else None
        indented = current is not None and _name_left(fragment, boxes) > min(_left(current, boxes), column) + indent
        if current is not None and _continues(current, fragment, following, indented, words):
            for name, indices in fragment.items():
                current.setdefault(name, []).extend(indices)
            continue
        if current is not None:
            joined.append(current)
        current = {name: list(indices) for name, indices in fragment.items()}
    if current is not None:
        joined.append(current)
    return [_item(parts, words, confidence) for parts in joined]


def _left(parts: dict[str, list[int]], boxes: np.ndarray) -> float:
    """Where an item starts: its leftmost word's left edge."""
    return float(min(boxes[index, 0] for indices in parts.values() for index in indices))


def _name_left(parts: dict[str, list[int]], boxes: np.ndarray) -> float:
    return float(boxes[parts["product"][0], 0]) if "product" in parts else float("inf")


def _continues(
    current: dict[str, list[int]],
    fragment: dict[str, list[int]],
    following: dict[str, list[int]] | None,
    indented: bool,
    words: Sequence[str],
) -> bool:
    """Whether ``fragment`` (a row's item words) belongs to the open item ``current``; ``indented``: the row's
    name starts right of where the item (or the receipt's items) start."""
    mine, theirs = set(current), set(fragment)
    if not mine & theirs:
        if theirs <= {"quantity", "unit_price"} and {"product", "line_total"} <= mine and following is not None:
            return not _prices_belong_to(fragment, following, current, words)
        return True
    if theirs == {"product"} and mine == {"product"}:
        return True  # a name wrapped before its prices
    if "product" in theirs and mine == {"product"}:
        return True  # the name's last words, on the row of its prices
    if theirs == {"product"} and "product" in mine and mine & _PRICES:
        # a name wrapped after its prices is indented under the item, or followed by the item's quantity line; a
        # name level with the item is the next item's, whose prices follow or went unlabelled
        return indented or (following is not None and not {"product", "line_total"} & set(following))
    return False


def _prices_belong_to(
    prices: dict[str, list[int]], candidate: dict[str, list[int]], other: dict[str, list[int]], words: Sequence[str]
) -> bool:
    """Whether a quantity line's quantity times unit price is ``candidate``'s line total and not ``other``'s."""
    if not {"quantity", "unit_price"} <= set(prices) or "line_total" not in candidate or set(candidate) & set(prices):
        return False
    quantity = read_quantity(_text(prices["quantity"], words))
    unit = read_amount(_text(prices["unit_price"], words))
    if quantity is None or unit is None:
        return False
    product = round(Decimal(quantity) * Decimal(unit), 2)
    totals = [read_amount(_text(item.get("line_total", []), words)) for item in (candidate, other)]
    return (
        totals[0] is not None and Decimal(totals[0]) == product and (totals[1] is None or Decimal(totals[1]) != product)
    )


def _text(indices: Sequence[int], words: Sequence[str]) -> str:
    return " ".join(words[index] for index in indices)


def _item(parts: dict[str, list[int]], words: Sequence[str], confidence: Sequence[float] | None) -> LineItem:
    texts = {name: _text(parts[name], words) if name in parts else None for name in ITEM_LABELS.values()}
    indices = sorted({index for group in parts.values() for index in group})
    sure = None
    if confidence is not None:
        known = [float(confidence[i]) for i in indices if confidence[i] is not None and not np.isnan(confidence[i])]
        sure = min(known) if known else None
    return LineItem(
        product=texts["product"],
        quantity=read_quantity(texts["quantity"]),
        unit_price=read_amount(texts["unit_price"]),
        line_total=read_amount(texts["line_total"]),
        quantity_text=texts["quantity"],
        unit_price_text=texts["unit_price"],
        line_total_text=texts["line_total"],
        words=indices,
        confidence=sure,
    )


# ------------------------------------------------------------------------------------------ checks and scores


@dataclass(frozen=True)
class ItemsCheck:
    """Whether a receipt's line totals add up to what it says they come to."""

    status: str  # "adds_up", "does_not_add_up" or "unchecked" (no line total or nothing to compare with)
    items_sum: str | None
    against: str | None  # "subtotal", or "total" (less tax and tip) where no subtotal was read
    expected: str | None
    adjustments: str | None  # discounts and coupons read, as one (negative) amount

    @property
    def flagged(self) -> bool:
        return self.status == "does_not_add_up"

    def to_dict(self) -> dict:
        return {**asdict(self), "flagged": self.flagged}


def adjustment_amounts(words: Sequence[str], tags: Sequence[str]) -> list[str]:
    """Every discount and coupon amount the tags mark, each as read (None-free)."""
    spans = label_spans(tags)
    amounts = [read_amount(_text(run, words)) for label in ADJUSTMENT_LABELS for run in spans.get(label, [])]
    return [amount for amount in amounts if amount is not None]


def check_items(
    items: Sequence[LineItem], amounts: Mapping[str, str | None], adjustments: Sequence[str] = ()
) -> ItemsCheck:
    """Line totals against the subtotal (or the total less tax and tip): they add up when they equal it to the
    cent, with or without the receipt's discounts and coupons taken off (printed either side of the subtotal)."""
    totals = [amount_cents(item.line_total) for item in items if item.line_total is not None]
    cents = {name: amount_cents(amounts.get(name)) for name in ("subtotal", "total", "tax", "tip")}
    off = -sum(abs(amount_cents(amount) or 0) for amount in adjustments)
    against, expected = None, None
    if cents["subtotal"] is not None:
        against, expected = "subtotal", cents["subtotal"]
    elif cents["total"] is not None:
        against, expected = "total", cents["total"] - (cents["tax"] or 0) - (cents["tip"] or 0)
    summed = sum(totals)
    shown = {
        "items_sum": _money(summed) if totals else None,
        "against": against,
        "expected": _money(expected) if expected is not None else None,
        "adjustments": _money(off) if adjustments else None,
    }
    if not totals or expected is None:
        return ItemsCheck("unchecked", **shown)
    status = "adds_up" if expected in (summed, summed + off) else "does_not_add_up"
    return ItemsCheck(status, **shown)


def _money(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


def item_counts(truth: Sequence[LineItem], predicted: Sequence[LineItem]) -> list[int]:
    """[correct, predicted, reference] items of one receipt: an item counts when its product text and line total
    match a reference item's, each reference item matched once."""
    want, got = Counter(item.match_key for item in truth), Counter(item.match_key for item in predicted)
    return [sum((want & got).values()), len(predicted), len(truth)]


def item_scores(counts: Mapping[str, Sequence[int]]) -> dict:
    """Item-level precision, recall and F1 from :func:`item_counts` of the receipts to score."""
    correct, found, true = (int(v) for v in np.sum(list(counts.values()) or [[0, 0, 0]], axis=0))
    precision = correct / found if found else 0.0
    recall = correct / true if true else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * correct / (found + true) if found + true else 0.0,
        "correct": correct,
        "predicted": found,
        "support": true,
        "receipts": len(counts),
    }
