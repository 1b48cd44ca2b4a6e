"""Line items assembled on the users' real receipts: the geometry they publish, read with true tags.

python -m benchmarks users-line-items

The users' repository publishes hand-labelled line items of 38 real receipts (25 stores: warehouse clubs, grocers,
drive-throughs, hardware, restaurants) with the OCR words of each receipt's items zone
(``receipt_pipeline_tests/fixtures/users_line_items_golden.json`` names the source). Each true item's words are
tagged as the users labelled the item (its name's words PRODUCT_NAME, its printed total LINE_TOTAL, its quantity and
unit price where printed, a discount DISCOUNT), found on the OCR lines the item spans; the rest of the words stay
unlabelled (item numbers, tax flags, the lines of a name the users leave out). :func:`assemble_items` then groups
the tagged words into items from their boxes alone, as it does for a model's tags, and each assembled item is
matched against the true one by name and price. This is the ceiling of the assembly on real geometry: a model's
tags can only do worse.

The users publish each word's left edge, vertical centre and height, not its width: a word's right edge is its
left edge plus its characters times the receipt's character width, read off the gaps between words on a line.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from receipt_pipeline.core.bio import bio_tags
from receipt_pipeline.core.line_items import assemble_items
from receipt_pipeline.core.receipt_values import read_amount

GOLDEN = Path(__file__).resolve().parents[1] / "receipt_pipeline_tests" / "fixtures" / "users_line_items_golden.json"


def load(path: Path = GOLDEN) -> list[dict]:
    return json.loads(path.read_text())["receipts"]


def _key(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _char_width(words: list[dict]) -> float:
    by_line = defaultdict(list)
    for word in words:
        by_line[word["line_id"]].append(word)
    widths = []
    for line in by_line.values():
        line.sort(key=lambda w: w["x"])
        widths += [(b["x"] - a["x"]) / (len(a["text"]) + 1) for a, b in zip(line, line[1:], strict=False)]
    positive = [width for width in widths if width > 0]
    return statistics.median(positive) if positive else 0.012


def _pick(words: list[dict], on_lines: list[int], picked: dict[int, str], text: str, label: str, amount: bool) -> bool:
    """Tags the first word of ``on_lines`` not yet picked whose text is ``text`` (as an amount, or letters and
    digits alike); whether one was."""
    for i in on_lines:
        if i in picked or not _key(text):
            continue
        same = read_amount(words[i]["text"]) == read_amount(text) if amount else _key(words[i]["text"]) == _key(text)
        if same:
            picked[i] = label
            return True
    return False


def tagged(receipt: dict) -> tuple[list[str], list[str], np.ndarray, list[int], list[dict]]:
    """The receipt's words, their true tags, boxes (0..1000, y down), OCR line ids, and the true items whose
    name and price were all found among the words of their lines (the others cannot be assembled from tags)."""
    words = receipt["words"]
    labels: list[str | None] = [None] * len(words)
    findable = []
    for item in receipt["true_items"]:
        on_lines = [i for i, w in enumerate(words) if w["line_id"] in item["line_ids"] and labels[i] is None]
        picked: dict[int, str] = {}

        def find(text: str, label: str, amount: bool = False, *, on_lines=on_lines, picked=picked) -> bool:
            return _pick(words, on_lines, picked, text, label, amount)

        price_label = "DISCOUNT" if item["is_discount"] else "LINE_TOTAL"
        found = find(item["price"], price_label, amount=True)
        name_words = [token for token in item["name"].split() if _key(token)]
        # the name's words where most of them are, in order: a short name printed again beside an item number
        # (VERSABOND on the item-number line, VERSABOND BONDING MORTAR on the next) is the line the users named
        matches = Counter(words[i]["line_id"] for i in on_lines if _key(words[i]["text"]) in map(_key, name_words))
        on_lines.sort(key=lambda i: (-matches[words[i]["line_id"]], words[i]["line_id"], words[i]["x"]))
        found = all([find(token, "PRODUCT_NAME") for token in name_words]) and found
        if item["quantity"] is not None and item["unit_price"] is not None:
            find(str(item["quantity"]), "QUANTITY")
            find(item["unit_price"], "UNIT_PRICE", amount=True)
        if item["is_discount"]:
            for i in [i for i, label in picked.items() if label == "PRODUCT_NAME"]:
                del picked[i]  # a discount's words are not an item's
        for i, label in picked.items():
            labels[i] = label
        if found and not item["is_discount"]:
            findable.append(item)
    width = _char_width(words)
    boxes = np.asarray(
        [
            [w["x"] * 1000, (1 - w["y_mid"] - w["h"] / 2) * 1000,
             (w["x"] + width * len(w["text"])) * 1000, (1 - w["y_mid"] + w["h"] / 2) * 1000]
            for w in words
        ]
    )  # fmt: skip
    return [w["text"] for w in words], bio_tags(labels), boxes, [w["line_id"] for w in words], findable


def score(receipts: list[dict]) -> dict:
    """Per receipt and in all: true items, the items whose words were found, and those assembled right (the
    same name words and the same price)."""
    totals = Counter()
    per_receipt = []
    for receipt in receipts:
        words, tags, boxes, lines, findable = tagged(receipt)
        items = [item for item in receipt["true_items"] if not item["is_discount"]]
        assembled = assemble_items(words, tags, boxes, lines)
        got = Counter((_key(item.product or ""), item.line_total) for item in assembled)
        right = 0
        for item in findable:
            key = (_key(item["name"]), read_amount(item["price"]))
            if got[key] > 0:
                got[key] -= 1
                right += 1
        row = {
            "merchant": receipt["merchant"],
            "items": len(items),
            "found": len(findable),
            "assembled": len(assembled),
            "right": right,
        }
        per_receipt.append(row)
        totals.update({name: row[name] for name in ("items", "found", "assembled", "right")})
        totals["receipts"] += 1
        totals["receipts all right"] += right == len(findable) == len(items)
    return {"receipts": per_receipt, "totals": dict(totals)}


def markdown() -> str:
    result = score(load())
    totals = result["totals"]
    rows = "\n".join(
        f"| {row['merchant']} | {row['items']} | {row['found']} | {row['assembled']} | {row['right']} |"
        for row in result["receipts"]
    )
    share = totals["right"] / max(1, totals["found"])
    return (
        f"### Line items on the users' real receipts: {totals['receipts']} receipts, {totals['items']} items, "
        "true tags\n\n"
        f"| store | true items | items whose words were found | items assembled | assembled right |\n"
        f"|---|---|---|---|---|\n{rows}\n"
        f"| **all** | **{totals['items']}** | **{totals['found']}** | **{totals['assembled']}** | "
        f"**{totals['right']} ({share:.0%} of those found)** |\n\n"
        f"{totals['receipts all right']} of {totals['receipts']} receipts have every item assembled right."
    )


if __name__ == "__main__":
    print(markdown())
