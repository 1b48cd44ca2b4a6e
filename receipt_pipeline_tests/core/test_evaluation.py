"""BIO repair, seqeval strict scoring, the confusion matrix, the report."""

from __future__ import annotations

import numpy as np
import pytest

from receipt_pipeline.core import bio, evaluation


@pytest.mark.parametrize(
    ("tags", "repaired"),
    [
        (["I-DATE", "I-DATE", "O"], ["B-DATE", "I-DATE", "O"]),
        (["B-TAX", "I-TOTAL", "I-TOTAL"], ["B-TAX", "B-TOTAL", "I-TOTAL"]),
        (["O", "I-TAX", "O", "I-TAX"], ["O", "B-TAX", "O", "B-TAX"]),
        # a B- inside a run of its label continues the run: the references never hold two X side by side
        (["B-TAX", "I-TAX", "B-TAX"], ["B-TAX", "I-TAX", "I-TAX"]),
        (["B-PRODUCT_NAME", "B-PRODUCT_NAME", "B-LINE_TOTAL"], ["B-PRODUCT_NAME", "I-PRODUCT_NAME", "B-LINE_TOTAL"]),
    ],
)
def test_repair_bio_makes_each_run_of_a_label_one_entity(tags, repaired):
    assert evaluation.repair_bio(tags) == repaired


def test_repaired_predictions_read_as_the_references_are_built():
    labels = ["DATE", "DATE", None, "TOTAL", "TAX", "TAX", None, None, "TAX"]
    references = bio.bio_tags(labels)
    predicted_as_words = [f"B-{label}" if label else "O" for label in labels]  # right word by word, all B-
    assert evaluation.repair_bio(predicted_as_words) == references
    scores = evaluation.entity_scores({"r": references}, {"r": evaluation.repair_bio(predicted_as_words)})
    assert scores["overall"]["f1"] == 1.0


def test_entity_scores_are_strict_iob2_entity_level():
    truth = {"a": ["B-DATE", "I-DATE", "O", "B-TOTAL"], "b": ["B-DATE", "O"]}
    predicted = {
        "a": ["B-DATE", "O", "O", "B-TOTAL"],  # the date is cut short: wrong in strict mode, the total right
        "b": ["B-DATE", "O"],
    }
    scores = evaluation.entity_scores(truth, predicted)
    assert scores["overall"]["precision"] == pytest.approx(2 / 3)
    assert scores["overall"]["recall"] == pytest.approx(2 / 3)
    assert scores["per_label"]["DATE"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["per_label"]["TOTAL"]["f1"] == 1.0
    all_o = evaluation.entity_scores(truth, {k: ["O"] * len(v) for k, v in truth.items()})
    assert all_o["overall"]["f1"] == 0.0


def test_the_overall_scores_alone_are_the_reports_overall_scores():
    tags = ["O", "B-DATE", "I-DATE", "B-TOTAL", "I-TOTAL"]
    rng = np.random.default_rng(3)
    truth = {f"r{i}": evaluation.repair_bio(rng.choice(tags, 40, p=[0.6, 0.1, 0.1, 0.1, 0.1])) for i in range(30)}
    # predictions that are mostly right, wrong at random elsewhere, orphan I- tags included
    predicted = {k: [t if rng.random() < 0.8 else str(rng.choice(tags)) for t in v] for k, v in truth.items()}
    for guess in (predicted, truth, {k: ["O"] * len(v) for k, v in truth.items()}):
        assert evaluation.overall_entity_scores(truth, guess) == evaluation.entity_scores(truth, guess)["overall"]


def test_per_receipt_entity_counts_add_up_to_seqevals_scores_on_any_subset_of_receipts():
    tags = ["O", "B-DATE", "I-DATE", "B-TOTAL", "I-TOTAL"]
    rng = np.random.default_rng(4)
    truth = {f"r{i}": evaluation.repair_bio(rng.choice(tags, 30, p=[0.6, 0.1, 0.1, 0.1, 0.1])) for i in range(40)}
    predicted = {k: [t if rng.random() < 0.7 else str(rng.choice(tags)) for t in v] for k, v in truth.items()}
    counts = evaluation.receipt_entity_counts(truth, predicted)
    for subset in (sorted(truth), sorted(truth)[:7]):
        report = evaluation.entity_scores({k: truth[k] for k in subset}, {k: predicted[k] for k in subset})
        for label in ("DATE", "TOTAL"):
            correct, found, true = np.sum([counts[k].get(label, [0, 0, 0]) for k in subset], axis=0)
            assert true == report["per_label"][label]["support"]
            assert correct / found == pytest.approx(report["per_label"][label]["precision"])
            assert 2 * correct / (found + true) == pytest.approx(report["per_label"][label]["f1"])
        correct, found, true = np.sum([v for k in subset for v in counts[k].values()], axis=0)
        assert 2 * correct / (found + true) == pytest.approx(report["overall"]["f1"])


def test_the_confusion_matrix_counts_words_and_draws_a_png():
    truth = {"a": ["B-DATE", "I-DATE", "O", "B-TOTAL"]}
    predicted = {"a": ["B-DATE", "O", "O", "B-DATE"]}
    names, matrix = evaluation.confusion_matrix(truth, predicted, ["DATE", "TOTAL"])
    assert names == ["DATE", "TOTAL", "O"]
    assert matrix.tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]
    png = evaluation.confusion_png(names, np.asarray(matrix))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_the_training_sample_is_chosen_by_key_the_same_for_the_same_receipts():
    keys = [f"dynamo/r{i}/00001" for i in range(50)]
    sample = evaluation.train_sample_keys(keys, 10)
    assert len(sample) == 10 and set(sample) <= set(keys) and sample == sorted(sample)
    assert evaluation.train_sample_keys(list(reversed(keys)), 10) == sample, "order does not matter"
    assert set(sample) <= set(evaluation.train_sample_keys(keys, 20)), "a larger sample holds the smaller"
    assert evaluation.train_sample_keys(keys[:5], 10) == sorted(keys[:5])
