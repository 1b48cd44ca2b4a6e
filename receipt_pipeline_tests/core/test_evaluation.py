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


def test_the_total_is_the_amount_the_receipt_calls_the_total_and_the_company_one_span_without_its_number():
    labels = {"company": "MERCHANT_NAME", "total": "GRAND_TOTAL", "date": "DATE"}
    words = ["MYNEWS", "RETAIL", "SB(306295-X)", "TOTAL", "RM12.50", "CASH", "20.00", "ROUNDING", "0.00"]
    tags = ["B-MERCHANT_NAME", "I-MERCHANT_NAME", "B-MERCHANT_NAME", "O", "B-GRAND_TOTAL", "O", "B-GRAND_TOTAL",
            "O", "B-GRAND_TOTAL"]  # fmt: skip
    fields = evaluation.extract_fields(words, tags, labels)
    # the tagger also tagged the cash given and the rounding: the amount after TOTAL is the total
    assert fields["total"] == "RM12.50" and evaluation.comparable("total", fields["total"]) == "12.50"
    # a span broken by a B- inside the name is one span; the registration number is not the name
    assert fields["company"] == "MYNEWS RETAIL SB"
    # a SUBTOTAL is no cue: with no called total, the last amount
    fields = evaluation.extract_fields(["SUBTOTAL", "9.00", "10.60"], ["O", "B-GRAND_TOTAL", "B-GRAND_TOTAL"], labels)
    assert fields["total"] == "10.60"


@pytest.mark.parametrize(
    ("field", "reference", "predicted"),
    [
        ("total", "RM 3.90", "3.90"),
        ("total", "7838.80", "7,838.80"),
        ("total", "43.7", "TOTAL:$43.70"),
        ("total", "RM111.90", "CC*7185:RM111.90"),
        ("date", "28/03/18", "DATE:28-03-2018"),
        ("date", "(06/12/2016)", "NO/DATE:K074-001096(06/12/2016)"),
        ("date", "20180428", "20180428/191204"),
        ("date", "15 MAR 2018", "15-03-18 10:42"),
        ("company", "ACME MART", "acme  mart"),
    ],
)
def test_totals_and_dates_are_compared_as_amounts_and_dates(field, reference, predicted):
    assert evaluation.comparable(field, reference) == evaluation.comparable(field, predicted)


@pytest.mark.parametrize(
    ("field", "one", "other"),
    [("total", "3.90", "3.99"), ("date", "28/03/18", "29/03/18"), ("date", "01/02/2018", "02/01/2018")],
)
def test_different_amounts_and_dates_stay_different(field, one, other):
    assert evaluation.comparable(field, one) != evaluation.comparable(field, other)


def test_a_wrong_field_is_a_tagging_error_where_the_true_tags_give_it_else_an_extraction_error():
    truth = {"r1": {"total": "9.90", "company": "ACME"}, "r2": {"total": "5.00", "company": "BOOKS CO"}}
    predicted = {"r1": {"total": "9.00", "company": "ACME"}, "r2": {"total": "5.10", "company": "B00KS CO"}}
    from_true_tags = {"r1": {"total": "9.90", "company": "ACME"}, "r2": {"total": "5.10", "company": "B00KS CO"}}
    errors = evaluation.field_errors(truth, predicted, from_true_tags)
    assert errors["total"] == {"errors": 2, "tagging": 1, "extraction": 1}
    assert errors["company"] == {"errors": 1, "tagging": 0, "extraction": 1}  # an OCR typo no tagger can fix
    assert errors["date"] == {"errors": 0, "tagging": 0, "extraction": 0}


def test_the_extraction_applied_to_the_true_tags_of_the_shared_sroie_split_scores_at_least_095(shared_sroie_dir):
    from receipt_pipeline.core import bio
    from receipt_pipeline.core.sroie import read_sroie

    split = bio.build_split([read_sroie(str(shared_sroie_dir)).frame], bio.SplitOptions())
    table = split.table
    references = bio.reference_fields(table)
    keys = table.column("key").to_pylist()
    words = dict(zip(keys, table.column("words").to_pylist(), strict=True))
    tags = dict(zip(keys, table.column("tags").to_pylist(), strict=True))
    labels = {name.lower(): label for name, label in bio.DEFAULT_SROIE_LABELS.items()}
    extracted = {key: evaluation.extract_fields(words[key], tags[key], labels) for key in references}
    scores = evaluation.field_scores(references, extracted)
    # the rest are annotations the OCR words cannot give (typos the annotators fixed) and addresses' punctuation
    assert scores["overall"]["f1"] >= 0.95, scores["per_field"]
    assert scores["per_field"]["total"]["f1"] >= 0.99 and scores["per_field"]["date"]["f1"] >= 0.99


def test_the_confusion_matrix_counts_words_and_draws_a_png():
    truth = {"a": ["B-DATE", "I-DATE", "O", "B-TOTAL"]}
    predicted = {"a": ["B-DATE", "O", "O", "B-DATE"]}
    names, matrix = evaluation.confusion_matrix(truth, predicted, ["DATE", "TOTAL"])
    assert names == ["DATE", "TOTAL", "O"]
    assert matrix.tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]
    png = evaluation.confusion_png(names, np.asarray(matrix))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
