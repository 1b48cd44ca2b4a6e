"""BIO repair, seqeval strict scoring, SROIE field extraction and exact match, the confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from receipt_pipeline.core import evaluation


@pytest.mark.parametrize(
    ("tags", "repaired"),
    [
        (["I-DATE", "I-DATE", "O"], ["B-DATE", "I-DATE", "O"]),
        (["B-TAX", "I-TOTAL", "I-TOTAL"], ["B-TAX", "B-TOTAL", "I-TOTAL"]),
        (["O", "I-TAX", "O", "I-TAX"], ["O", "B-TAX", "O", "B-TAX"]),
        (["B-TAX", "I-TAX", "B-TAX"], ["B-TAX", "I-TAX", "B-TAX"]),
    ],
)
def test_repair_bio_turns_orphan_inside_tags_into_beginnings(tags, repaired):
    assert evaluation.repair_bio(tags) == repaired


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


def test_fields_are_extracted_as_the_leaderboard_reads_them():
    words = ["ACME", "MART", "NO.1", "JALAN", "X,", "KL", "SUBTOTAL", "9.00", "TOTAL", "9.90", "01/02/2018"]
    tags = ["B-MERCHANT_NAME", "I-MERCHANT_NAME", "B-ADDRESS_LINE", "I-ADDRESS_LINE", "I-ADDRESS_LINE",
            "B-ADDRESS_LINE", "O", "B-GRAND_TOTAL", "O", "B-GRAND_TOTAL", "B-DATE"]  # fmt: skip
    labels = {"company": "MERCHANT_NAME", "address": "ADDRESS_LINE", "total": "GRAND_TOTAL", "date": "DATE"}
    fields = evaluation.extract_fields(words, tags, labels)
    assert fields == {"company": "ACME MART", "address": "NO.1 JALAN X, KL", "total": "9.90", "date": "01/02/2018"}


def test_field_scores_match_exactly_ignoring_whitespace_and_case():
    truth = {
        "r1": {"company": "ACME MART", "date": "01/02/2018", "address": "NO.1 JALAN X,KL", "total": "9.90"},
        "r2": {"company": "BOOKS SDN BHD", "date": "03/04/2018", "address": "", "total": "12.00"},
    }
    predicted = {
        "r1": {"company": "acme  mart", "date": "01/02/2018", "address": "NO.1 JALAN X, KL", "total": "9.00"},
        "r2": {"company": "", "date": "03/04/2018", "address": "LOT 5", "total": "12.00"},
    }
    scores = evaluation.field_scores(truth, predicted)
    # right: r1 company, date, address; r2 date, total. Non-empty: 7 predicted, 7 references.
    assert scores["overall"]["correct"] == 5
    assert scores["overall"]["precision"] == pytest.approx(5 / 7)
    assert scores["overall"]["recall"] == pytest.approx(5 / 7)
    assert scores["per_field"]["total"]["correct"] == 1 and scores["per_field"]["company"]["recall"] == 0.5
    # a predicted address where the reference has none costs precision only
    assert scores["per_field"]["address"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "correct": 1,
        "support": 1,
    }


def test_the_confusion_matrix_counts_words_and_draws_a_png():
    truth = {"a": ["B-DATE", "I-DATE", "O", "B-TOTAL"]}
    predicted = {"a": ["B-DATE", "O", "O", "B-DATE"]}
    names, matrix = evaluation.confusion_matrix(truth, predicted, ["DATE", "TOTAL"])
    assert names == ["DATE", "TOTAL", "O"]
    assert matrix.tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]
    png = evaluation.confusion_png(names, np.asarray(matrix))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
