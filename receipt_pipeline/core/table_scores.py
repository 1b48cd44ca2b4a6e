"""The table's receipts scored as their users read them: each field's exact match, line items at item level, the
product-detail labels' macro F1, and how much better a model does on receipts it trained on.

A table receipt states no field values of its own (SROIE's entity strings have no counterpart), so its reference
is the same extraction applied to its VALID labels: a field or an item the model gets wrong is then a tagging
error, and the extraction's own errors are measured apart, against what synthetic receipts printed (the
``table-fields`` benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from receipt_pipeline.core import fields, line_items, word_table
from receipt_pipeline.core.receipt_values import DateOrder

PRODUCT_DETAIL_LABELS = line_items.PRODUCT_DETAIL_LABELS


@dataclass(frozen=True)
class ReceiptLayout:
    """What scoring reads of a receipt beyond its tags: its words, their boxes (0..1000, y down), its OCR lines."""

    words: list[str]
    boxes: np.ndarray
    line_ids: np.ndarray | None = None


def layouts_of(rows) -> dict[str, ReceiptLayout]:
    """Each receipt's layout from rows of the split (its ``key``, ``words``, ``boxes`` and ``line_ids`` columns)."""
    columns = rows.column_names
    keys = rows.column("key").to_pylist()
    words = rows.column("words").to_pylist()
    boxes = rows.column("boxes").to_pylist()
    lines = rows.column("line_ids").to_pylist() if "line_ids" in columns else [None] * len(keys)
    return {
        key: ReceiptLayout(
            list(text),
            np.asarray(box, dtype=np.float64).reshape(-1, 4),
            None if line is None else np.asarray(line),
        )
        for key, text, box, line in zip(keys, words, boxes, lines, strict=True)
    }


def is_table_receipt(key: str) -> bool:
    return key.split("/", 1)[0] == word_table.SOURCE_DYNAMO


def product_detail_scores(per_label: Mapping[str, Mapping]) -> dict:
    """The product-detail labels' precision, recall, F1 and support (from seqeval's per-label report), and their
    macro F1 over those the report has (None where it has none): the users' checkpoint metric."""
    labels = {label: dict(per_label[label]) for label in PRODUCT_DETAIL_LABELS if label in per_label}
    macro = float(np.mean([values["f1"] for values in labels.values()])) if labels else None
    return {"labels": labels, "macro_f1": macro}


def receipt_readings(
    truth: Mapping[str, Sequence[str]],
    predicted: Mapping[str, Sequence[str]],
    layouts: Mapping[str, ReceiptLayout],
    model_labels: Sequence[str],
) -> dict:
    """Per table receipt (of ``truth``'s with a layout): its fields and items read from the true tags and from the
    predicted ones, with the amounts and the savings their check against the subtotal reads."""
    field_labels = fields.labels_for(model_labels, fields.TABLE_FIELDS)
    # the items' check also reads the tip, a field the report does not score
    read_labels = fields.labels_for(model_labels, (*fields.TABLE_FIELDS, "tip"))
    readings = {}
    for key in sorted(truth):
        layout = layouts.get(key)
        if not is_table_receipt(key) or layout is None or len(layout.words) != len(truth[key]):
            continue
        per_reading = {}
        for name, tags in (("reference", list(truth[key])), ("predicted", list(predicted.get(key, ())))):
            if len(tags) != len(layout.words):
                tags = [fields.OUTSIDE] * len(layout.words)
            read = fields.extract_fields(layout.words, tags, read_labels)
            per_reading[name] = {
                "fields": {field: read[field] for field in field_labels},
                "items": line_items.assemble_items(layout.words, tags, layout.boxes, layout.line_ids),
                "amounts": {field: read.get(field) for field in ("subtotal", "total", "tax", "tip")},
                "adjustments": line_items.adjustment_amounts(layout.words, tags),
            }
        readings[key] = per_reading
    return {"field_labels": field_labels, "receipts": readings}


def table_scores(
    truth: Mapping[str, Sequence[str]],
    predicted: Mapping[str, Sequence[str]],
    layouts: Mapping[str, ReceiptLayout],
    model_labels: Sequence[str],
    table_date_order: DateOrder = "MDY",
) -> dict | None:
    """The table receipts' field and line-item scores, with the per-receipt counts that slices and paired
    comparisons sum: None where the receipts hold no table receipt."""
    read = receipt_readings(truth, predicted, layouts, model_labels)
    receipts = read["receipts"]
    if not receipts:
        return None
    orders = fields.date_orders(table_date_order)
    scored = tuple(read["field_labels"])
    references = {key: reading["reference"]["fields"] for key, reading in receipts.items()}
    guesses = {key: reading["predicted"]["fields"] for key, reading in receipts.items()}
    field_counts = fields.field_counts(references, guesses, scored, orders)
    has_items = any(label in model_labels for label in ("PRODUCT_NAME", "LINE_TOTAL"))
    item_counts = (
        {
            key: line_items.item_counts(reading["reference"]["items"], reading["predicted"]["items"])
            for key, reading in receipts.items()
        }
        if has_items
        else {}
    )
    not_adding_up = {"reference": 0, "predicted": 0}
    for reading in receipts.values():
        for name in not_adding_up:
            side = reading[name]
            amounts = {field: fields.value(field, text) for field, text in side["amounts"].items()}
            not_adding_up[name] += line_items.check_items(side["items"], amounts, side["adjustments"]).flagged
    return {
        "receipts": len(receipts),
        "fields": {
            **fields.scores_of(field_counts, scored),
            "unreadable_references": fields.unreadable(references, scored, orders),
            "date_order": table_date_order,
        },
        "line_items": {**line_items.item_scores(item_counts), "items_not_adding_up": not_adding_up}
        if has_items
        else None,
        "field_counts": field_counts,
        "item_counts": item_counts,
    }


def slice_figures(scores: Mapping | None, groups: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Per slice, the table receipts' field F1 and line-item F1 over the slice's table receipts (none where it has
    none), from :func:`table_scores`' per-receipt counts."""
    if not scores:
        return {}
    figures = {}
    for name, keys in groups.items():
        table_keys = [key for key in keys if key in scores["field_counts"]]
        if not table_keys:
            continue
        field_counts = {key: scores["field_counts"][key] for key in table_keys}
        summed = fields.scores_of(field_counts, sorted({f for row in field_counts.values() for f in row}))
        row = {"table_receipts": len(table_keys), "field_f1": summed["overall"]["f1"]}
        if scores["item_counts"]:
            row["line_item_f1"] = line_items.item_scores({key: scores["item_counts"][key] for key in table_keys})["f1"]
        figures[name] = row
    return figures


def headline(scores: Mapping | None, product_details: Mapping) -> dict[str, float]:
    """The figures a report or a gate puts beside entity F1: the table's field F1 and line-item F1 and the
    product-detail macro F1, where they exist."""
    figures = {}
    if scores:
        figures["table_field_f1"] = scores["fields"]["overall"]["f1"]
        if scores["line_items"]:
            figures["line_item_f1"] = scores["line_items"]["f1"]
    if product_details.get("macro_f1") is not None:
        figures["product_detail_macro_f1"] = product_details["macro_f1"]
    return figures


def markdown(table: Mapping | None, product_details: Mapping, train_sample: Mapping | None) -> list[str]:
    """The report's sections on the table's receipts, the product-detail labels and the training sample."""
    lines: list[str] = []
    if table:
        scored = table["fields"]
        lines += [
            "",
            f"The table's fields ({table['receipts']} receipts, dates read {scored['date_order']}), exact match "
            "against the same extraction applied to the VALID labels (a wrong value is a tagging error); a "
            "reference unreadable is a VALID date, time, amount or phone that reads as none:",
            "",
            "| field | precision | recall | F1 | correct | support | references unreadable |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, values in [*scored["per_field"].items(), ("**overall**", scored["overall"])]:
            unreadable = scored["unreadable_references"].get(name, sum(scored["unreadable_references"].values()))
            lines.append(
                f"| {name} | {values['precision']:.3f} | {values['recall']:.3f} | {values['f1']:.3f} "
                f"| {values['correct']} | {values['support']} | {unreadable} |"
            )
        items = table["line_items"]
        if items:
            adding = items["items_not_adding_up"]
            lines += [
                "",
                f"Line items (an item counts when its product text and line total match): precision "
                f"{items['precision']:.3f}, recall {items['recall']:.3f}, F1 {items['f1']:.3f} ({items['correct']} "
                f"right of {items['predicted']} predicted and {items['support']} labelled). Receipts whose line "
                f"totals do not add up to the subtotal: {adding['predicted']} as predicted, {adding['reference']} "
                "as labelled.",
            ]
    labels = product_details.get("labels") or {}
    if labels:
        lines += [
            "",
            f"Product details: macro F1 {product_details['macro_f1']:.3f} over {', '.join(labels)}.",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
            for name, v in labels.items()
        ]
    if train_sample:
        lines += [
            "",
            f"On {train_sample['receipts']} of its own training receipts: entity F1 {train_sample['entity_f1']:.3f} "
            f"against {train_sample['test_entity_f1']:.3f} here, a gap of {train_sample['entity_f1_gap']:+.3f}"
            + (
                f"; product-detail macro F1 {train_sample['product_detail_macro_f1']:.3f} against "
                f"{train_sample['test_product_detail_macro_f1']:.3f} "
                f"({train_sample['product_detail_macro_f1_gap']:+.3f})"
                if train_sample.get("product_detail_macro_f1_gap") is not None
                else ""
            )
            + ". A large gap reads as templates memorised.",
        ]
    return lines
