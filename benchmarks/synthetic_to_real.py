"""A model trained on synthetic receipts, read on the users' real ones: how well the synthetic table teaches.

python -m benchmarks synthetic-to-real            (10 minutes of training)
python -m benchmarks.synthetic_to_real 2          (another budget, in minutes)

The users' own recipe: the compact model trained with every default (every split and training default, at the
budget, until early stopping) on 400 receipts of ``seed-synthetic``'s default seed, the table only. Scored twice:

1. on its own synthetic test receipts, as ``evaluation_report`` scores them (entity F1, strict IOB2, and the
   product-detail macro F1 over PRODUCT_NAME, QUANTITY, UNIT_PRICE and LINE_TOTAL);
2. on the users' published real receipts (``benchmarks/users_line_items.py``: the OCR words of 38 receipts' item
   zones, each true item's words tagged as the users labelled it), read through ``predict_words`` as ``infer``
   reads a receipt: the four product-detail labels' entity F1 and their macro F1, and the line items assembled
   from the model's tags matched by name and price. Only the items are labelled there, so the model's other
   labels count as O on those words (an item number it calls a phone number is not an error here).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import users_line_items
from benchmarks.split_strategies import synthetic_frame
from benchmarks.table_fields import train_and_evaluate

RECEIPTS = 400
SEED = 0  # seed-synthetic's default


def real_frame(receipts: list[dict]):
    """The users' item zones as a word table (0..1, y down), words in their line and word order."""
    from receipt_pipeline.core import word_table

    columns: dict[str, list] = {name: [] for name in word_table.COLUMNS}
    for receipt in receipts:
        width = users_line_items._char_width(receipt["words"])
        for word in receipt["words"]:
            values = {
                "source": word_table.SOURCE_DYNAMO,
                "source_split": None,
                "image_id": receipt["image_id"],
                "receipt_id": receipt["receipt_id"],
                "line_id": word["line_id"],
                "word_id": word["word_id"],
                "text": word["text"],
                "x0": min(max(word["x"], 0.0), 1.0),
                "y0": min(max(1 - word["y_mid"] - word["h"] / 2, 0.0), 1.0),
                "x1": min(max(word["x"] + width * len(word["text"]), 0.0), 1.0),
                "y1": min(max(1 - word["y_mid"] + word["h"] / 2, 0.0), 1.0),
                "confidence": float("nan"),
                "labels": [],
                "label": None,
            }
            for name, value in values.items():
                columns[name].append(value)
    return word_table.to_frame(columns)


def _details_only(tags: list[str]) -> list[str]:
    from receipt_pipeline.core.line_items import PRODUCT_DETAIL_LABELS

    return [tag if tag != "O" and tag[2:] in PRODUCT_DETAIL_LABELS else "O" for tag in tags]


def score_on_real(model_folder: Path) -> dict:
    """The model's product-detail entity scores and line items on the users' real item zones."""
    from receipt_pipeline.core import word_table
    from receipt_pipeline.core.evaluation import entity_scores
    from receipt_pipeline.core.inference import load_model, predict_words
    from receipt_pipeline.core.receipt_values import read_amount
    from receipt_pipeline.core.table_scores import product_detail_scores

    receipts = users_line_items.load()
    for receipt in receipts:  # the order predict_words reads a receipt in
        receipt["words"] = sorted(receipt["words"], key=lambda w: (w["line_id"], w["word_id"]))
    predictions = predict_words(load_model(str(model_folder)), real_frame(receipts))
    truth, predicted, findable = {}, {}, {}
    for receipt in receipts:
        key = word_table.receipt_key(word_table.SOURCE_DYNAMO, receipt["image_id"], receipt["receipt_id"])
        _, tags, _, _, found = users_line_items.tagged(receipt)
        truth[key] = _details_only(tags)
        words = predictions.words[predictions.words["key"] == key]
        predicted[key] = _details_only(words["tag"].tolist())
        findable[key] = found
    scores = entity_scores(truth, predicted)
    details = product_detail_scores(scores["per_label"])
    right = Counter()
    for key, items in findable.items():
        got = Counter(
            (users_line_items._key(row.product if isinstance(row.product, str) else ""), row.line_total)
            for row in predictions.items[predictions.items["key"] == key].itertuples()
        )
        for item in items:
            wanted = (users_line_items._key(item["name"]), read_amount(item["price"]))
            right["items"] += 1
            if got[wanted] > 0:
                got[wanted] -= 1
                right["right"] += 1
    return {
        "receipts": len(receipts),
        "entity": scores["overall"],
        "details": details,
        "items": right["items"],
        "items_right": right["right"],
    }


def run(minutes: float = 10.0, receipts: int = RECEIPTS, seed: int = SEED) -> dict:
    from receipt_pipeline.core import bio

    split = bio.build_split([synthetic_frame(receipts, seed)], bio.SplitOptions())
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-to-real-") as scratch:
        result, report, seconds = train_and_evaluate(split, Path(scratch), minutes)
        real = score_on_real(result.best_dir)
    return {
        "synthetic": {"entity": report.entity["overall"], "details": report.product_details},
        "real": real,
        "receipts": split.receipts_per_split(),
        "steps": result.steps,
        "seconds": seconds,
    }


def markdown(minutes: float = 10.0, result: dict | None = None) -> str:
    """The section for BENCHMARKS.md, from a fresh run or from ``result`` (what :func:`run` returned)."""
    if result is None:
        print(f"  training {minutes:g} min on {RECEIPTS} synthetic receipts", file=sys.stderr, flush=True)
        result = run(minutes)
    synthetic, real = result["synthetic"], result["real"]

    def detail(scores: dict, label: str) -> str:
        values = scores["labels"].get(label)
        return f"{values['f1']:.3f}" if values else "-"

    rows = [
        f"| entity F1 | {synthetic['entity']['f1']:.3f} (every label) | {real['entity']['f1']:.3f} "
        "(the four product-detail labels) |",
        f"| product-detail macro F1 | {synthetic['details']['macro_f1']:.3f} | {real['details']['macro_f1']:.3f} |",
    ]
    for label in ("PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL"):
        rows.append(f"| {label} F1 | {detail(synthetic['details'], label)} | {detail(real['details'], label)} |")
    rows.append(
        f"| line items from the model's tags, right by name and price | - | {real['items_right']} of {real['items']} |"
    )
    split = " / ".join(str(n) for n in result["receipts"].values())
    return (
        f"### A model trained on {RECEIPTS} synthetic receipts, read on the users' real receipts ({minutes:g} min)\n\n"
        f"The compact model, every split and training default but the budget ({minutes:g} minutes, set here as the "
        f"users' recipe has it; the local deployment's default is 2.5), {result['steps']} steps in "
        f"{result['seconds']:.0f} s "
        f"(receipts train / validation / test {split}); the real side is the users' {real['receipts']} published "
        "item zones.\n\n"
        "| | synthetic test receipts | the users' real receipts |\n|---|---|---|\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    print(markdown(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
