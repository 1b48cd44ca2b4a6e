"""The table's receipts read as the users read them: fields and line items, the extraction's ceiling and a model's.

python -m benchmarks table-fields              (5 minutes of training, every other default)
python -m benchmarks.table_fields 2            (another budget, in minutes)

1. The extraction's ceiling, no model: the synthetic table's receipts (400 of seed 23) read from their true tags
   (what each word really is, as the generator printed it) and from their VALID labels as ``raw_receipt_words``
   reads them (the report's reference), against what the generator printed: each field's value, each item's words
   and values, whether the line totals add up. SROIE's ceiling beside it: the same extraction on its true tags
   against the entity strings SROIE states.
2. A model: the synthetic table and the shared SROIE split together, split with the ``merchant`` strategy (every
   other split default), windowed and trained with every training default at the budget, and scored as
   ``evaluation_report`` scores them: the table's fields and line items, SROIE's fields, the product-detail macro
   F1 and the gap to a sample of the training receipts.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.split_strategies import SYNTHETIC_RECEIPTS, SYNTHETIC_SEED, sroie_frame, synthetic_frame
from benchmarks.sroie_training import compact_windows

CEILING_FIELDS = ("date", "time", "subtotal", "tax", "total")
ITEM_PARTS = ("items assembled", "items values right", "items as printed")
ALL_LABELS = (
    "MERCHANT_NAME", "DATE", "TIME", "SUBTOTAL", "TAX", "TIP", "GRAND_TOTAL", "DISCOUNT", "COUPON", "PRODUCT_NAME",
    "QUANTITY", "UNIT_PRICE", "LINE_TOTAL",
)  # fmt: skip


def _frame_receipts(frame) -> dict[tuple[str, int], object]:
    ordered = frame.sort_values(["image_id", "receipt_id", "line_id", "word_id"], kind="stable")
    return {(str(i), int(r)): group for (i, r), group in ordered.groupby(["image_id", "receipt_id"], sort=False)}


def ceiling(receipts: int = SYNTHETIC_RECEIPTS, seed: int = SYNTHETIC_SEED) -> dict:
    """The synthetic receipts' fields and items read from their true tags and from their VALID labels, against
    what was printed."""

    from receipt_pipeline.core import fields, line_items
    from receipt_pipeline.core.bio import bio_tags, scale_boxes
    from receipt_pipeline.core.synthetic import iter_synthetic_receipts

    read = _frame_receipts(synthetic_frame(receipts, seed))
    tallies = {name: Counter() for name in ("true tags", "VALID labels")}
    for receipt in iter_synthetic_receipts(receipts, seed):
        group = read.get((receipt.image_id, receipt.receipt_id))
        if group is None:  # a receipt with no VALID label is not read
            continue
        words = group["text"].astype(str).tolist()
        flat = [word for line in receipt.lines for word in line.words]
        if [w.text for w in flat] != words:
            raise RuntimeError(f"the reader's words of {receipt.image_id} differ from the generator's")
        boxes = scale_boxes(*(group[name].to_numpy() for name in ("x0", "y0", "x1", "y1")))
        lines = group["line_id"].to_numpy()
        printed = receipt.facts
        expected_items = defaultdict(list)
        for index, word in enumerate(flat):
            if word.item is not None:
                expected_items[word.item].append(index)
        for name, labels in (
            ("true tags", [w.truth for w in flat]),
            ("VALID labels", [label if isinstance(label, str) else None for label in group["label"]]),
        ):
            tally = tallies[name]
            tags = bio_tags(labels)
            values = {field: reading.value for field, reading in fields.read_fields(words, tags, ALL_LABELS).items()}
            tally["receipts"] += 1
            for field in CEILING_FIELDS:
                tally[f"{field} right"] += values.get(field) == getattr(printed, field)
            items = line_items.assemble_items(words, tags, boxes, lines)
            assembled = {tuple(item.words): item for item in items}
            tally["items printed"] += len(printed.items)
            tally["items found"] += len(items)
            for number, facts in enumerate(printed.items):
                item = assembled.get(tuple(expected_items[number]))
                if item is None:
                    continue
                tally["items assembled"] += 1
                ocr_product = " ".join(words[i] for i in expected_items[number] if flat[i].truth == "PRODUCT_NAME")
                values_right = (item.quantity, item.unit_price, item.line_total) == (
                    facts.quantity,
                    facts.unit_price,
                    facts.line_total,
                )
                tally["items values right"] += values_right and item.product == ocr_product
                tally["items as printed"] += values_right and item.product == facts.product
            amounts = {field: values.get(field) for field in ("subtotal", "total", "tax", "tip")}
            check = line_items.check_items(items, amounts, line_items.adjustment_amounts(words, tags))
            tally[f"receipts {check.status}"] += 1
    return {"tallies": tallies, "sroie": sroie_ceiling()}


def sroie_ceiling() -> dict:
    from receipt_pipeline.core import bio, fields

    split = bio.build_split([sroie_frame()], bio.SplitOptions())
    table = split.table
    references = bio.reference_fields(table)
    keys = table.column("key").to_pylist()
    words = dict(zip(keys, table.column("words").to_pylist(), strict=True))
    tags = dict(zip(keys, table.column("tags").to_pylist(), strict=True))
    labels = {name.lower(): label for name, label in bio.DEFAULT_SROIE_LABELS.items()}
    extracted = {key: fields.extract_fields(words[key], tags[key], labels) for key in references}
    return fields.field_scores(references, extracted)


def train_and_evaluate(split, work: Path, minutes: float, *, train_sample: int = 0):
    """``split`` windowed and trained under ``work`` with every training default at ``minutes``, then its test
    receipts scored as ``evaluation_report`` scores them: (the training result, the report, seconds trained)."""
    import pyarrow.compute as pc

    from receipt_pipeline.core import bio, table_scores
    from receipt_pipeline.core.base_model import COMPACT
    from receipt_pipeline.core.evaluation import evaluate
    from receipt_pipeline.core.training import train
    from receipt_pipeline.core.training_options import TrainingOptions

    tokenizer, manifest, _ = compact_windows(split, work)
    options = TrainingOptions(base_model=COMPACT, max_train_minutes=minutes).resolved()
    started = time.monotonic()
    result = train(manifest, work / "run", options, tokenizer=tokenizer)
    seconds = time.monotonic() - started
    test = split.table.filter(pc.equal(split.table.column("split"), "test"))
    train_rows = split.table.filter(pc.equal(split.table.column("split"), "train"))
    report = evaluate(
        result.best_dir,
        manifest,
        split="test",
        words=dict(zip(test.column("key").to_pylist(), test.column("words").to_pylist(), strict=True)),
        references=bio.reference_fields(test),
        sroie_labels=bio.DEFAULT_SROIE_LABELS,
        pad_token_id=tokenizer.pad_token_id,
        receipts={row["key"]: row for row in test.select(["key", "source", "merchant", "added_at"]).to_pylist()},
        train_merchants=set(train_rows.column("merchant").to_pylist()) - {bio.UNKNOWN_MERCHANT},
        recent_since=split.record.get("recent_since"),
        layouts=table_scores.layouts_of(test),
        train_sample=min(test.num_rows, train_sample),
    )
    return result, report, seconds


def trained(minutes: float) -> dict:
    """Both sources, the merchant split, every training default at ``minutes``: the report's figures."""
    from receipt_pipeline.core import bio
    from receipt_pipeline.core.evaluation import TRAIN_SAMPLE_MAX

    split = bio.build_split([synthetic_frame(), sroie_frame()], bio.SplitOptions(strategy="merchant"))
    with tempfile.TemporaryDirectory(prefix="bench-table-fields-") as scratch:
        result, report, seconds = train_and_evaluate(split, Path(scratch), minutes, train_sample=TRAIN_SAMPLE_MAX)
    return {
        "report": report,
        "receipts": split.receipts_per_split(),
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": seconds,
    }


def _share(tally: Counter, name: str, of: str = "receipts") -> str:
    return f"{tally[name] / tally[of]:.1%} ({tally[name]} of {tally[of]})" if tally[of] else "none"


def markdown(minutes: float = 5.0) -> str:
    print("  the extraction's ceiling", file=sys.stderr, flush=True)
    measured = ceiling()
    print(f"  training {minutes:g} min", file=sys.stderr, flush=True)
    model = trained(minutes)
    report = model["report"]
    lines = [
        f"### The table's fields and line items: the extraction's ceiling, and a model trained {minutes:g} minutes",
        "",
        f"The synthetic table ({SYNTHETIC_RECEIPTS} receipts of seed {SYNTHETIC_SEED}, read by the table reader "
        "with the default statuses) read by the same extraction the report, the predictions and `infer` use "
        "(`core/fields.py`, `core/line_items.py`; dates month first), against what the generator printed. "
        "*True tags*: every word's real label, what a perfect tagger gives. *VALID labels*: the labels the table "
        "holds (about one word in seven has none VALID), which the report takes as the reference. An item is "
        "*assembled* when exactly its own words make one item; its *values* are right when its quantity, unit "
        "price and line total are the printed ones and its product the words' text (*as printed*: the product "
        "as printed, before OCR noise).",
        "",
        "| read from | receipts | date | time | subtotal | tax | total | items assembled | item values right "
        "| items as printed | receipts adding up |",
        "|---|---:|---|---|---|---|---|---|---|---|---|",
    ]
    for name, tally in measured["tallies"].items():
        cells = [_share(tally, f"{field} right") for field in CEILING_FIELDS]
        lines.append(
            f"| {name} | {tally['receipts']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(_share(tally, part, "items printed") for part in ITEM_PARTS)
            + f" | {_share(tally, 'receipts adds_up')} |"
        )
    sroie = measured["sroie"]
    lines += [
        "",
        f"SROIE's ceiling, the same extraction on its true tags against the strings it states ({sroie['receipts']} "
        "receipts, dates day first): field F1 "
        + ", ".join(f"{name} {v['f1']:.3f}" for name, v in sroie["per_field"].items())
        + f"; overall {sroie['overall']['f1']:.3f}.",
        "",
        f"A model: both sources split by merchant (receipts train / validation / test "
        f"{' / '.join(str(n) for n in model['receipts'].values())}), the compact model trained with every training "
        f"default at a {minutes:g}-minute budget ({model['steps']} steps, {model['epochs']:.1f} epochs, "
        f"{model['seconds'] / 60:.1f} min), its test receipts scored as `evaluation_report` scores them.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| entity F1 (all test receipts) | {report.entity['overall']['f1']:.3f} |",
    ]
    table = report.table
    if table:
        for name, values in table["fields"]["per_field"].items():
            lines.append(
                f"| table field F1: {name} | {values['f1']:.3f} (P {values['precision']:.3f}, "
                f"R {values['recall']:.3f}, {values['support']} labelled) |"
            )
        lines.append(
            f"| **table field F1, overall** ({table['receipts']} receipts) "
            f"| **{table['fields']['overall']['f1']:.3f}** |"
        )
        items = table["line_items"]
        if items:
            lines.append(
                f"| **line-item F1** | **{items['f1']:.3f}** (P {items['precision']:.3f}, R {items['recall']:.3f}; "
                f"{items['correct']} of {items['support']} labelled, {items['predicted']} predicted) |"
            )
            lines.append(
                f"| receipts not adding up, predicted / labelled | {items['items_not_adding_up']['predicted']} / "
                f"{items['items_not_adding_up']['reference']} |"
            )
    if report.fields:
        per_field = ", ".join(f"{name} {v['f1']:.3f}" for name, v in report.fields["per_field"].items())
        lines.append(
            f"| **SROIE field F1** ({report.fields['receipts']} receipts) "
            f"| **{report.fields['overall']['f1']:.3f}** ({per_field}) |"
        )
    details = report.product_details
    if details.get("macro_f1") is not None:
        per_label = ", ".join(
            f"{name} {v['f1']:.3f} (P {v['precision']:.3f}, R {v['recall']:.3f})"
            for name, v in details["labels"].items()
        )
        lines.append(f"| product-detail macro F1 | {details['macro_f1']:.3f}: {per_label} |")
    if report.train_sample:
        sample = report.train_sample
        lines.append(
            f"| entity F1 on {sample['receipts']} training receipts against the test receipts "
            f"| {sample['entity_f1']:.3f} against {sample['test_entity_f1']:.3f} (gap {sample['entity_f1_gap']:+.3f}) |"
        )
    for name, values in report.slices.items():
        if "field_f1" in values:
            extra = f", line-item F1 {values['line_item_f1']:.3f}" if "line_item_f1" in values else ""
            lines.append(
                f"| slice {name}: table field F1 | {values['field_f1']:.3f} ({values['table_receipts']} table "
                f"receipts{extra}) |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0), flush=True)
