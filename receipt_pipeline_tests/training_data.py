"""Windows for training tests, built by the pipeline's own code from synthetic and shared SROIE receipts."""

from __future__ import annotations

import functools
from pathlib import Path

from receipt_pipeline.core import bio, word_table
from receipt_pipeline.core.base_model import COMPACT, load_tokenizer, tokenizer_fingerprint
from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble
from receipt_pipeline.core.sroie import read_sroie
from receipt_pipeline.core.synthetic import iter_receipt_items
from receipt_pipeline.core.windows import WindowOptions, write_windows

# For tests of how training runs, not of what it learns: train lines down-sampled to the earlier system's 70%
# entity share (an option, off by default) make shorter windows, so each of a test's few steps takes less time
QUICK_SPLIT = {"bio_receipt_split": {"config": {"entity_share_target": 0.7}}}


@functools.cache
def compact_tokenizer():
    return load_tokenizer(COMPACT)


# Runs that must see the same global batches however they split them (micro-batches, processes): dropout off
# and a random, not length-grouped, order. A learning rate above the compact default, so that six steps move
# the loss well beyond float noise on the synthetic table.
SAME_BATCHES = dict(max_steps=6, eval_steps=6, warmup_ratio=0.0, dropout=0.0, group_by_length=False, learning_rate=5e-4)


def synthetic_words(receipts: int, seed: int = 5):
    return word_table.to_frame(assemble(iter_receipt_items(receipts, seed), ReadOptions(table="t")).columns)


def sroie_subset(shared_sroie_dir: Path, target: Path, receipts: int) -> Path:
    """A SROIE-layout folder of symbolic links to the first ``receipts`` receipts of the shared split."""
    for folder in ("box", "entities"):
        (target / "train" / folder).mkdir(parents=True, exist_ok=True)
    for box in sorted((shared_sroie_dir / "train" / "box").glob("*.txt"))[:receipts]:
        (target / "train" / "box" / box.name).symlink_to(box)
        entities = shared_sroie_dir / "train" / "entities" / box.name
        (target / "train" / "entities" / box.name).symlink_to(entities)
    return target


def build_manifest(frames, folder: Path, options: bio.SplitOptions | None = None) -> tuple[dict, bio.SplitResult]:
    split = bio.build_split(frames, options or bio.SplitOptions())
    tokenizer = compact_tokenizer()
    manifest, _ = write_windows(
        split.table.to_batches(),
        tokenizer,
        split.labels,
        str(folder),
        WindowOptions(),
        settings={"tokenizer": {"base_model": COMPACT, "fingerprint": tokenizer_fingerprint(tokenizer)}},
    )
    return manifest, split


def sroie_frame(folder: Path):
    return read_sroie(str(folder)).frame


def small_production_model(tmp_path_factory) -> Path:
    """A production model's folder (model files and production.json, as promotion writes it) holding the best
    model of the session's small training run, which test_checkpoint_scores.py trains once and shares on disk.
    Its few steps teach it little: tests of what runs on a model, not of what it knows."""
    from receipt_pipeline.core import promotion
    from receipt_pipeline.core.training import weights_digest
    from receipt_pipeline_tests.core.test_checkpoint_scores import small_run

    run, _ = small_run(tmp_path_factory)
    root = tmp_path_factory.getbasetemp() / "small-production-model"
    if not (root / promotion.MANIFEST).is_file():
        best = run / "best"
        promotion.promote(str(best), str(root), {"checkpoint": {"version": weights_digest(best), "path": str(best)}})
    return root
