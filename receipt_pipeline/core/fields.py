"""A receipt's fields read from its tagged words (merchant, address, phone, date, time and the amounts), in the
form two readings are compared in, and scored by exact match: what the report, the predictions, ``infer`` and
``predict`` share. Values are read by :mod:`receipt_values`, with each source's date order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from receipt_pipeline.core import receipt_values, word_table
from receipt_pipeline.core.bio import OUTSIDE
from receipt_pipeline.core.receipt_values import DateOrder

# field -> the labels a model may call it by, in order of preference: the table's names, SROIE's own, a merge
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "merchant": ("MERCHANT_NAME", "COMPANY"),
    "address": ("ADDRESS_LINE", "ADDRESS"),
    "phone": ("PHONE_NUMBER",),
    "date": ("DATE",),
    # where TIME is merged into DATE, the time is read from the date's words
    "time": ("TIME", "DATE"),
    "total": ("GRAND_TOTAL", "TOTAL", "AMOUNT"),
    "subtotal": ("SUBTOTAL",),
    "tax": ("TAX",),
    "tip": ("TIP",),
    "discount": ("DISCOUNT",),
    "coupon": ("COUPON",),
    "change": ("CHANGE",),
    "cash_back": ("CASH_BACK",),
    "refund": ("REFUND",),
}
AMOUNT_FIELDS = ("total", "subtotal", "tax", "tip", "discount", "coupon", "change", "cash_back", "refund")
# the SROIE leaderboard's four fields (a merchant is its company), scored against the entity strings SROIE states
SROIE_FIELDS = ("company", "date", "address", "total")
# the table's fields the report scores, against the same extraction applied to the VALID labels
TABLE_FIELDS = ("merchant", "address", "phone", "date", "time", "subtotal", "tax", "total")
# who prints the day first: SROIE's Malaysian receipts; the table's order is the deployment's (month first)
SROIE_DATE_ORDER: DateOrder = "DMY"

# a word that calls the amount after it the total, and words that call it something else
TOTAL_CUE = re.compile(r"TOTAL|JUMLAH|AMOUNT|NETT|DUE|PAYABLE", re.IGNORECASE)
NOT_THE_TOTAL = re.compile(r"SUB|TAX|GST|SST|ROUND|DISC|SAVING|QTY|ITEM|CASH|CHANGE|TENDER|EXCL", re.IGNORECASE)
# a company's registration number printed after its name: "SDN BHD(728384-M)"
REGISTRATION = re.compile(r"\(?\s*\d{5,}\s*-\s*[A-Z0-9]\s*\)?$")


def date_orders(table_order: DateOrder = "MDY") -> dict[str, DateOrder]:
    """Source -> the order its numeric dates print day and month in."""
    return {word_table.SOURCE_DYNAMO: table_order, word_table.SOURCE_SROIE: SROIE_DATE_ORDER}


def order_of(key: str, orders: Mapping[str, DateOrder] | None) -> DateOrder:
    """A receipt's date order, from the source its key names (``<source>/<image>/<receipt>``)."""
    orders = orders or date_orders()
    return orders.get(key.split("/", 1)[0], orders.get(word_table.SOURCE_DYNAMO, "MDY"))


def labels_for(model_labels: Sequence[str], fields: Sequence[str] = tuple(FIELD_LABELS)) -> dict[str, str]:
    """Field -> the label a model with ``model_labels`` calls it by, for the fields it has a label for."""
    known = set(model_labels)
    return {
        name: next(label for label in FIELD_LABELS[name] if label in known)
        for name in fields
        if any(label in known for label in FIELD_LABELS[name])
    }


# ------------------------------------------------------------------------------------------ values


def normalised_text(text: str) -> str:
    """Text with whitespace and case ignored."""
    # the leaderboard compares strings; OCR words joined with spaces differ from the key only in spacing
    return re.sub(r"\s+", "", text or "").upper()


def _kind(field: str) -> str:
    if field in AMOUNT_FIELDS:
        return "amount"
    return field if field in ("date", "time", "phone") else "text"


def value(field: str, text: str | None, order: DateOrder = "MDY") -> str | None:
    """A field's value as the predictions give it: a date as ISO 8601, a time as ``HH:MM[:SS]``, an amount as a
    decimal string, a phone number as its digits, text as the words say; None where the words give no such value
    (the caller shows the text as unreadable)."""
    text = (text or "").strip()
    if not text:
        return None
    kind = _kind(field)
    if kind == "date":
        return receipt_values.read_date(text, order)
    if kind == "time":
        return receipt_values.read_time(text)
    if kind == "amount":
        return receipt_values.read_amount(text)
    if kind == "phone":
        digits = re.sub(r"\D", "", text)
        return digits if len(digits) >= 7 else None
    return text


def comparable(field: str, text: str | None, order: DateOrder = "MDY") -> str:
    """The form a field's value is compared in, for the reference and the prediction alike: its :func:`value`
    where it reads as one ("RM 9.00", "TOTAL:$9.0" and "9.00" are one amount; "DATE:28-03-18" and "28/03/2018"
    one date, read day first), else its text with whitespace and case ignored."""
    read = value(field, text, order) if _kind(field) != "text" else None
    return read if read is not None else normalised_text(text or "")


# ------------------------------------------------------------------------------------------ extraction


def extract_fields(words: Sequence[str], tags: Sequence[str], field_labels: Mapping[str, str]) -> dict[str, str]:
    """Fields from tagged words, as text: the address is all of its words; the total the amount the receipt calls
    the total (the last one after a cue such as TOTAL that no SUBTOTAL, TAX or CASH qualifies, else the last one:
    the payable total sits below subtotals); the merchant (SROIE's company) its first span, adjacent spans
    joined, without a registration number. Any other field is its label's first span."""
    fields = {}
    for field, chosen in field_words(words, tags, field_labels).items():
        text = " ".join(words[index] for index in chosen)
        fields[field] = REGISTRATION.sub("", text).strip() if field in ("company", "merchant") else text
    return fields


def field_words(words: Sequence[str], tags: Sequence[str], field_labels: Mapping[str, str]) -> dict[str, list[int]]:
    """The indices of the words each field of :func:`extract_fields` is made of (none where its label has no
    word): what a field's confidence is read from."""
    if len(tags) != len(words):
        raise ValueError(f"{len(tags)} tags for {len(words)} words")
    entities = label_spans(tags)
    chosen: dict[str, list[int]] = {}
    for field, label in field_labels.items():
        runs = entities.get(label, [])
        if not runs:
            chosen[field] = []
        elif field == "address":
            chosen[field] = [index for run in runs for index in run]
        elif field == "total":
            called = [run for run in runs if _called_total(words, run[0])]
            chosen[field] = list((called or runs)[-1])
        elif field in ("company", "merchant"):
            first, *rest = runs
            span = list(first)
            for run in rest:  # a span the tagger broke in two (B- inside the name)
                if run[0] == first[0] + len(span):
                    span += run
            chosen[field] = span
        else:
            chosen[field] = list(runs[0])
    return chosen


def label_spans(tags: Sequence[str]) -> dict[str, list[list[int]]]:
    """Label -> its entities, each the indices of its words: a ``B-`` or a gap starts a new one."""
    entities: dict[str, list[list[int]]] = {}
    for index, tag in enumerate(tags):
        if tag == OUTSIDE:
            continue
        runs = entities.setdefault(tag[2:], [])
        adjacent = bool(runs) and runs[-1][-1] == index - 1
        if tag.startswith("B-") or not adjacent:
            runs.append([])
        runs[-1].append(index)
    return entities


def _called_total(words: Sequence[str], start: int, reach: int = 3) -> bool:
    before = " ".join(words[max(0, start - reach) : start + 1])
    return bool(TOTAL_CUE.search(before)) and not NOT_THE_TOTAL.search(before)


@dataclass(frozen=True)
class FieldReading:
    text: str  # the words it was read from, joined; "" where the model found none
    value: str | None  # see value(); None with a text: unreadable
    words: list[int]  # their indices


def read_fields(
    words: Sequence[str], tags: Sequence[str], model_labels: Sequence[str], order: DateOrder = "MDY"
) -> dict[str, FieldReading]:
    """Every field the model has a label for, read from its predicted tags: what a prediction says."""
    named = labels_for(model_labels)
    texts = extract_fields(words, tags, named)
    chosen = field_words(words, tags, named)
    return {name: FieldReading(texts[name], value(name, texts[name], order), chosen[name]) for name in named}


# ------------------------------------------------------------------------------------------ scores


def field_counts(
    truth: Mapping[str, Mapping[str, str]],
    predicted: Mapping[str, Mapping[str, str]],
    fields: Sequence[str] = SROIE_FIELDS,
    orders: Mapping[str, DateOrder] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Per receipt and field, [correct, predicted, reference]: exact match in :func:`comparable` form of the
    non-empty values. Summed over any set of receipts, they give that set's scores (see :func:`scores_of`)."""
    counts = {}
    for key, reference in truth.items():
        order = order_of(key, orders)
        per_field = {}
        for field in fields:
            expected = comparable(field, reference[field], order) if reference.get(field) else ""
            guess = predicted.get(key, {}).get(field, "")
            got = comparable(field, guess, order) if guess else ""
            per_field[field] = [int(bool(expected) and got == expected), int(bool(got)), int(bool(expected))]
        counts[key] = per_field
    return counts


def scores_of(counts: Mapping[str, Mapping[str, Sequence[int]]], fields: Sequence[str]) -> dict:
    """Per field and overall precision, recall and F1 from :func:`field_counts` of the receipts to score."""
    per_field = {}
    totals = np.zeros(3, dtype=np.int64)
    for field in fields:
        summed = np.sum([row.get(field, [0, 0, 0]) for row in counts.values()] or [[0, 0, 0]], axis=0)
        per_field[field] = prf(*summed)
        totals += summed
    return {"overall": prf(*totals), "per_field": per_field, "receipts": len(counts)}


def field_scores(
    truth: Mapping[str, Mapping[str, str]],
    predicted: Mapping[str, Mapping[str, str]],
    fields: Sequence[str] = SROIE_FIELDS,
    orders: Mapping[str, DateOrder] | None = None,
) -> dict:
    """Field-level exact match (in :func:`comparable` form) over every receipt's non-empty fields: precision
    over predicted fields, recall over reference fields, per field and overall."""
    return scores_of(field_counts(truth, predicted, fields, orders), fields)


def field_errors(
    truth: Mapping[str, Mapping[str, str]],
    predicted: Mapping[str, Mapping[str, str]],
    from_true_tags: Mapping[str, Mapping[str, str]],
    fields: Sequence[str] = SROIE_FIELDS,
    orders: Mapping[str, DateOrder] | None = None,
) -> dict[str, dict[str, int]]:
    """Per field, the receipts whose value is wrong, split by cause: a tagging error where the extraction
    applied to the true tags gets it right, an extraction error (or an annotation the words cannot give)
    where it gets it wrong too."""
    errors = {}
    for field in fields:
        counts = {"errors": 0, "tagging": 0, "extraction": 0}
        for key, reference in truth.items():
            if not reference.get(field):
                continue
            order = order_of(key, orders)
            expected = comparable(field, reference[field], order)
            if comparable(field, predicted.get(key, {}).get(field, ""), order) == expected:
                continue
            counts["errors"] += 1
            oracle = comparable(field, from_true_tags.get(key, {}).get(field, ""), order)
            counts["tagging" if oracle == expected else "extraction"] += 1
        errors[field] = counts
    return errors


def unreadable(
    readings: Mapping[str, Mapping[str, str]], fields: Sequence[str], orders: Mapping[str, DateOrder] | None = None
) -> dict[str, int]:
    """Per field, the receipts whose words for it give no value (a date, time, amount or phone it cannot read)."""
    counts = dict.fromkeys(fields, 0)
    for key, fields_read in readings.items():
        order = order_of(key, orders)
        for field in fields:
            text = fields_read.get(field)
            if text and _kind(field) != "text" and value(field, text, order) is None:
                counts[field] += 1
    return counts


def prf(correct: int, predicted: int, reference: int) -> dict:
    correct, predicted, reference = int(correct), int(predicted), int(reference)
    precision = correct / predicted if predicted else 0.0
    recall = correct / reference if reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "correct": correct, "support": reference}
