"""What the synthetic receipts print of what real US receipts print: the share of receipts with each feature.

python -m benchmarks synthetic-coverage

2,000 receipts of ``seed-synthetic``'s default seed (0), every default (``label_noise`` 0, 10% unlabelled): each
receipt records the features it printed (``SyntheticReceipt.features``, set where the words are printed, not where a
family declares them), counted here per feature and per family of layouts (``receipt_pipeline/core/receipt_layouts``).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

RECEIPTS = 2000
SEED = 0

# the features the users' real receipts print, in the order the issue lists them (issue 35)
FEATURES = (
    "item numbers", "tax flags", "weighed items", "quantity on its own line", "quantity first on the line",
    "savings lines", "coupons", "deposits", "member numbers", "card blocks", "total restatements",
    "return policies and coupons with their dates", "store hours", "websites", "surveys", "long-form dates",
    "dates under a column header", "split and merged words", "boxes over the crop's edge",
)  # fmt: skip


def coverage(receipts: int = RECEIPTS, seed: int = SEED) -> dict:
    from receipt_pipeline.core.synthetic import iter_synthetic_receipts

    started = time.perf_counter()
    features: Counter[str] = Counter()
    families: dict[str, set[str]] = defaultdict(set)
    per_family: Counter[str] = Counter()
    misspelt = words = skewed = 0
    for receipt in iter_synthetic_receipts(receipts, seed):
        features.update(receipt.features)
        per_family[receipt.family] += 1
        for feature in receipt.features:
            families[feature].add(receipt.family)
        printed = [word for word in receipt.words() if not word.is_noise]
        words += len(printed)
        misspelt += any(word.text != word.printed_text for word in printed)
        skewed += abs(receipt.angle_degrees) >= 0.5
    return {
        "receipts": receipts,
        "seconds": time.perf_counter() - started,
        "features": features,
        "families": families,
        "per_family": per_family,
        "ocr misreadings": misspelt,
        "skewed": skewed,
        "words": words,
    }


def markdown() -> str:
    result = coverage()
    receipts = result["receipts"]
    rows = [
        f"| {feature} | {result['features'][feature] / receipts:.0%} | "
        f"{', '.join(sorted(result['families'][feature])) or '-'} |"
        for feature in FEATURES
    ]
    rows.append(
        f"| OCR misreadings (misspelt or confused characters) | {result['ocr misreadings'] / receipts:.0%} | all |"
    )
    rows.append(f"| skew of half a degree or more | {result['skewed'] / receipts:.0%} | all |")
    shares = ", ".join(f"{name} {count / receipts:.0%}" for name, count in result["per_family"].most_common())
    return (
        f"### Synthetic receipts against what real US receipts print: {receipts:,} receipts of seed {SEED}\n\n"
        "| feature | share of receipts | families printing it |\n|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nFamilies: {shares}. Generated in {result['seconds']:.1f} s ({result['words']:,} words)."
    )


if __name__ == "__main__":
    print(markdown())
