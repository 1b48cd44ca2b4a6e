"""How much a random receipt split flatters the model: the same training budget under the random, merchant and
recent splits, on the shared SROIE split and on the synthetic table, scored on each split's held-back receipts.

python -m benchmarks split-strategies                (4 minutes of training per split, every training default)
python -m benchmarks.split_strategies 2              (another budget, in minutes)

Each split is built by ``bio.build_split`` with only its strategy changed, windowed with the compact tokenizer,
trained with every training default at the budget, and scored as ``evaluation_report`` scores it, slices
included. The synthetic table's items are read by the reader that ``raw_receipt_words`` uses, so its receipts
carry the RECEIPT items' ``timestamp_added``; its receipts state no field values of their own, so their field
F1 is against the fields extracted from their labelled words.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sroie_training import SHARED_SROIE, compact_windows

SHARES = (0.7, 0.1, 0.2)  # train, validation (early stopping), held back
SYNTHETIC_RECEIPTS = 400
SYNTHETIC_SEED = 23
STRATEGIES = ("random", "merchant", "recent")
SLICES = ("merchant: seen in train", "merchant: unseen")


def synthetic_frame(receipts: int = SYNTHETIC_RECEIPTS, seed: int = SYNTHETIC_SEED):
    """The synthetic table's words as ``raw_receipt_words`` reads them (default statuses), with their upload
    times: each receipt's items go through the reader's own assembly (``dynamo_reader.assemble``, what every
    image partition read goes through) in memory, since the emulator takes minutes to hold a few hundred
    receipts."""
    from receipt_pipeline.core import word_table
    from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble
    from receipt_pipeline.core.synthetic import iter_synthetic_receipts, receipt_items

    options = ReadOptions(table="synthetic")
    partials = [assemble(receipt_items(r), options) for r in iter_synthetic_receipts(receipts, seed)]
    frame = word_table.to_frame({name: [v for p in partials for v in p.columns[name]] for name in word_table.COLUMNS})
    frame.attrs[word_table.RECEIPT_ADDED_ATTR] = {
        word_table.receipt_key(word_table.SOURCE_DYNAMO, *key): stamp
        for p in partials
        for key, stamp in p.receipt_added.items()
    }
    skipped = sum(sum(p.skipped.values()) for p in partials)
    if skipped:
        raise RuntimeError(f"the reader skipped {skipped} synthetic items: the generator and the reader disagree")
    return frame


def sroie_frame():
    from receipt_pipeline.core.sroie import read_sroie

    return read_sroie(str(SHARED_SROIE)).frame


def _rows(table, split: str):
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("split"), split))


def labelled_fields(rows, field_labels: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each receipt's fields as its true tags give them: the reference of receipts that state none."""
    from receipt_pipeline.core.fields import extract_fields

    return {
        row["key"]: extract_fields(row["words"], row["tags"], field_labels)
        for row in rows.select(["key", "words", "tags"]).to_pylist()
    }


def field_f1_of(rows: list[dict], fields: list[str]) -> tuple[float, int]:
    """Field F1 (exact match, the report's rule) over per-receipt detail rows, and how many receipts."""
    from receipt_pipeline.core.fields import field_scores

    expected = {row["key"]: {f: row.get(f"{f}_expected", "") for f in fields} for row in rows}
    predicted = {row["key"]: {f: row.get(f"{f}_predicted", "") for f in fields} for row in rows}
    return (field_scores(expected, predicted)["overall"]["f1"] if rows else float("nan")), len(rows)


def train_and_score(split, work: Path, minutes: float) -> dict:
    """One split trained at the budget with every training default, and its test receipts scored."""
    from receipt_pipeline.core import bio
    from receipt_pipeline.core.base_model import COMPACT
    from receipt_pipeline.core.evaluation import evaluate
    from receipt_pipeline.core.training import train
    from receipt_pipeline.core.training_options import TrainingOptions

    tokenizer, manifest, _ = compact_windows(split, work)
    options = TrainingOptions(base_model=COMPACT, max_train_minutes=minutes).resolved()
    started = time.monotonic()
    result = train(manifest, work / "run", options, tokenizer=tokenizer)
    trained = time.monotonic() - started
    test, train_rows = _rows(split.table, "test"), _rows(split.table, "train")
    field_labels = {n.lower(): label for n, label in bio.DEFAULT_SROIE_LABELS.items() if label in split.labels}
    references = {**labelled_fields(test, field_labels), **bio.reference_fields(test)}
    receipts = {row["key"]: row for row in test.select(["key", "source", "merchant", "added_at"]).to_pylist()}
    report = evaluate(
        result.best_dir,
        manifest,
        split="test",
        words=dict(zip(test.column("key").to_pylist(), test.column("words").to_pylist(), strict=True)),
        references=references,
        sroie_labels=bio.DEFAULT_SROIE_LABELS,
        pad_token_id=tokenizer.pad_token_id,
        receipts=receipts,
        train_merchants=set(train_rows.column("merchant").to_pylist()) - {bio.UNKNOWN_MERCHANT},
        recent_since=split.record.get("recent_since"),
    )
    details = report.details["receipts"]
    seen = [row for row in details if row["merchant_seen_in_train"]]
    unseen = [row for row in details if not row["merchant_seen_in_train"] and row["merchant"] != bio.UNKNOWN_MERCHANT]
    fields = list(field_labels)
    headline = report.headline()
    return {
        "entity_f1": headline["entity_f1"],
        "field_f1": headline.get("field_f1", float("nan")),
        "slices": {name: report.slices.get(name) for name in SLICES},
        "field_slices": {SLICES[0]: field_f1_of(seen, fields), SLICES[1]: field_f1_of(unseen, fields)},
        "training_seconds": trained,
        "steps": result.steps,
        "epochs": result.epochs,
    }


def run(minutes: float = 4.0) -> dict:
    from receipt_pipeline.core import bio

    sources = {"SROIE (shared training split)": sroie_frame(), "synthetic table": synthetic_frame()}
    outcome: dict = {}
    for source, frame in sources.items():
        rows, trained_by_keys = {}, {}
        for strategy in STRATEGIES:
            split = bio.build_split([frame], bio.SplitOptions(strategy=strategy, shares=SHARES, seed=42))
            record = split.record
            test_keys = record["keys_sha256"]["test"]
            if test_keys in trained_by_keys:  # the same receipts in the same splits: the same training
                rows[strategy] = {**rows[trained_by_keys[test_keys]], "same_split_as": trained_by_keys[test_keys]}
            else:
                print(f"  {source}, {strategy}: training {minutes:g} min", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory(prefix=f"bench-split-{strategy}-") as scratch:
                    rows[strategy] = train_and_score(split, Path(scratch), minutes)
                trained_by_keys[test_keys] = strategy
            rows[strategy].update(
                receipts=split.receipts_per_split(),
                merchants=record["merchants"],
                test_merchants_seen_in_train=record.get("test_merchants_seen_in_train"),
            )
            print(f"  {source}, {strategy}: {rows[strategy]}", file=sys.stderr, flush=True)
        outcome[source] = rows
    return outcome


def _slice_cell(scores: dict | None) -> str:
    if not scores or not scores.get("receipts"):
        return "none"
    return f"{scores['f1']:.3f} ({scores['receipts']} receipts, {scores['support']} entities)"


def _field_cell(value: tuple[float, int]) -> str:
    f1, receipts = value
    return "none" if not receipts else f"{f1:.3f} ({receipts})"


def markdown(minutes: float = 4.0) -> str:
    outcome = run(minutes)
    lines = [
        f"### Random against merchant and recent splits, {minutes:g} minutes of training each",
        "",
        f"Each source split by receipt {SHARES[0]:.0%} / {SHARES[1]:.0%} / {SHARES[2]:.0%} (train / validation / "
        "test; seed 42) under each strategy, nothing else changed; the compact model trained with every training "
        f"default at a {minutes:g}-minute budget per split, and each split's test receipts scored as "
        "`evaluation_report` scores them. SROIE's merchant is its COMPANY words; the synthetic table "
        f"({SYNTHETIC_RECEIPTS} receipts of seed {SYNTHETIC_SEED}, read by the table reader with the default "
        "statuses) has about 40 merchants, each with its own layout template. Field F1 on the "
        "synthetic table is against the fields its labelled words give (its receipts state none of their own). "
        "Slices: test receipts whose merchant is or is not in train, F1 with receipts and true entities.",
        "",
        "| source | split | receipts train / val / test | test merchants seen in train | entity F1 | field F1 "
        "| entity F1, seen merchants | entity F1, unseen merchants | field F1, seen (receipts) "
        "| field F1, unseen (receipts) | trained |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    findings = []
    for source, rows in outcome.items():
        for strategy, row in rows.items():
            counts = " / ".join(str(n) for n in row["receipts"].values())
            seen = f"{row['test_merchants_seen_in_train']} of {row['merchants']['test']}"
            trained = (
                f"same split as {row['same_split_as']}"
                if "same_split_as" in row
                else f"{row['steps']} steps, {row['epochs']:.1f} epochs"
            )
            lines.append(
                f"| {source} | {strategy} | {counts} | {seen} | **{row['entity_f1']:.3f}** | **{row['field_f1']:.3f}** "
                f"| {_slice_cell(row['slices'][SLICES[0]])} | {_slice_cell(row['slices'][SLICES[1]])} "
                f"| {_field_cell(row['field_slices'][SLICES[0]])} | {_field_cell(row['field_slices'][SLICES[1]])} "
                f"| {trained} |"
            )
        random, merchant = rows["random"], rows["merchant"]
        findings.append(
            f"- {source}: holding whole merchants out moves entity F1 from {random['entity_f1']:.3f} to "
            f"{merchant['entity_f1']:.3f} ({merchant['entity_f1'] - random['entity_f1']:+.3f}) and field F1 from "
            f"{random['field_f1']:.3f} to {merchant['field_f1']:.3f} "
            f"({merchant['field_f1'] - random['field_f1']:+.3f})."
        )
    seconds = [r["training_seconds"] for rows in outcome.values() for r in rows.values() if "same_split_as" not in r]
    lines += [
        "",
        *findings,
        f"- Median training time per split {statistics.median(seconds) / 60:.1f} min. A strategy whose split puts "
        "the same receipts in the same places as an earlier one (SROIE has no upload times, so `recent` keeps "
        "its hash split there) is not trained again: its row repeats that one's scores.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(float(sys.argv[1]) if len(sys.argv) > 1 else 4.0), flush=True)
