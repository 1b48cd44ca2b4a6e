"""A short CPU training of the compact model on real SROIE receipts beats the all-O baseline."""

from __future__ import annotations

import pyarrow as pa
import pytest

from receipt_pipeline.core import bio
from receipt_pipeline.core.evaluation import entity_scores, evaluate, true_receipt_tags
from receipt_pipeline.core.fields import field_scores
from receipt_pipeline.core.sroie import read_sroie
from receipt_pipeline.core.training import train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline.core.windows import WindowSet
from receipt_pipeline_tests.training_data import build_manifest, sroie_subset

pytestmark = pytest.mark.slow


def test_a_few_minutes_of_training_on_sroie_beat_the_all_o_baseline(shared_sroie_dir, tmp_path):
    folder = sroie_subset(shared_sroie_dir, tmp_path / "sroie", receipts=240)
    sroie = read_sroie(str(folder))
    manifest, split = build_manifest([sroie.frame], tmp_path / "windows", bio.SplitOptions(shares=(0.7, 0.1, 0.2)))
    # one window batch per step: many updates in little time
    options = TrainingOptions(
        epochs=12, gradient_accumulation_steps=1, max_train_minutes=2.5, early_stopping_patience=12
    )
    result = train(manifest, tmp_path / "run", options)
    assert result.first_loss > 1.5 * result.last_loss, (result.first_loss, result.last_loss)

    test = split.table.filter(pa.compute.equal(split.table.column("split"), "test"))
    words = dict(zip(test.column("key").to_pylist(), test.column("words").to_pylist(), strict=True))
    references = bio.reference_fields(test)
    report = evaluate(
        result.best_dir, manifest, words=words, references=references, sroie_labels=bio.DEFAULT_SROIE_LABELS
    )
    # the trivial baseline: every word O, scored the same way
    truth = true_receipt_tags(WindowSet(manifest, "test"))
    all_o = {key: ["O"] * len(tags) for key, tags in truth.items()}
    baseline_entity = entity_scores(truth, all_o)["overall"]["f1"]
    # the split carried the entity strings the SROIE reader read with the words
    assert references == {key: sroie.entities[key.split("/")[1]] for key in truth}
    baseline_fields = field_scores(references, {})["overall"]["f1"]
    assert baseline_entity == baseline_fields == 0.0
    assert report.entity["overall"]["f1"] > baseline_entity + 0.2, report.markdown()
    assert report.fields["overall"]["f1"] > baseline_fields + 0.2, report.markdown()
