"""Fields read from tagged words: extraction as the SROIE leaderboard reads it, each source's date order, exact
match in comparable form, the split of errors into tagging and extraction."""

from __future__ import annotations

import pytest

from receipt_pipeline.core import fields


def test_fields_are_extracted_as_the_leaderboard_reads_them():
    words = ["ACME", "MART", "NO.1", "JALAN", "X,", "KL", "SUBTOTAL", "9.00", "TOTAL", "9.90", "01/02/2018"]
    tags = ["B-MERCHANT_NAME", "I-MERCHANT_NAME", "B-ADDRESS_LINE", "I-ADDRESS_LINE", "I-ADDRESS_LINE",
            "B-ADDRESS_LINE", "O", "B-GRAND_TOTAL", "O", "B-GRAND_TOTAL", "B-DATE"]  # fmt: skip
    labels = {"company": "MERCHANT_NAME", "address": "ADDRESS_LINE", "total": "GRAND_TOTAL", "date": "DATE"}
    extracted = fields.extract_fields(words, tags, labels)
    assert extracted == {"company": "ACME MART", "address": "NO.1 JALAN X, KL", "total": "9.90", "date": "01/02/2018"}


def test_field_scores_match_exactly_ignoring_whitespace_and_case():
    truth = {
        "r1": {"company": "ACME MART", "date": "01/02/2018", "address": "NO.1 JALAN X,KL", "total": "9.90"},
        "r2": {"company": "BOOKS SDN BHD", "date": "03/04/2018", "address": "", "total": "12.00"},
    }
    predicted = {
        "r1": {"company": "acme  mart", "date": "01/02/2018", "address": "NO.1 JALAN X, KL", "total": "9.00"},
        "r2": {"company": "", "date": "03/04/2018", "address": "LOT 5", "total": "12.00"},
    }
    scores = fields.field_scores(truth, predicted)
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
    extracted = fields.extract_fields(words, tags, labels)
    # the tagger also tagged the cash given and the rounding: the amount after TOTAL is the total
    assert extracted["total"] == "RM12.50" and fields.comparable("total", extracted["total"]) == "12.50"
    # a span broken by a B- inside the name is one span; the registration number is not the name
    assert extracted["company"] == "MYNEWS RETAIL SB"
    # a SUBTOTAL is no cue: with no called total, the last amount
    extracted = fields.extract_fields(["SUBTOTAL", "9.00", "10.60"], ["O", "B-GRAND_TOTAL", "B-GRAND_TOTAL"], labels)
    assert extracted["total"] == "10.60"


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
def test_sroie_totals_and_dates_are_compared_as_amounts_and_dates_read_day_first(field, reference, predicted):
    assert fields.comparable(field, reference, "DMY") == fields.comparable(field, predicted, "DMY")


@pytest.mark.parametrize(
    ("field", "one", "other"),
    [("total", "3.90", "3.99"), ("date", "28/03/18", "29/03/18"), ("date", "01/02/2018", "02/01/2018")],
)
def test_different_amounts_and_dates_stay_different(field, one, other):
    for order in ("DMY", "MDY"):
        assert fields.comparable(field, one, order) != fields.comparable(field, other, order)


def test_a_wrong_field_is_a_tagging_error_where_the_true_tags_give_it_else_an_extraction_error():
    truth = {"r1": {"total": "9.90", "company": "ACME"}, "r2": {"total": "5.00", "company": "BOOKS CO"}}
    predicted = {"r1": {"total": "9.00", "company": "ACME"}, "r2": {"total": "5.10", "company": "B00KS CO"}}
    from_true_tags = {"r1": {"total": "9.90", "company": "ACME"}, "r2": {"total": "5.10", "company": "B00KS CO"}}
    errors = fields.field_errors(truth, predicted, from_true_tags)
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
    extracted = {key: fields.extract_fields(words[key], tags[key], labels) for key in references}
    scores = fields.field_scores(references, extracted)
    # the rest are annotations the OCR words cannot give (typos the annotators fixed) and addresses' punctuation
    assert scores["overall"]["f1"] >= 0.95, scores["per_field"]
    assert scores["per_field"]["total"]["f1"] >= 0.99 and scores["per_field"]["date"]["f1"] >= 0.99


def test_a_table_receipt_reads_dates_month_first_and_a_sroie_receipt_day_first():
    reference = {"date": "05/06/2025"}
    truth = {"dynamo/a/00001": reference, "sroie/b/00001": reference}
    # the same words, read as each source prints them: May 6 on a US receipt, June 5 on a Malaysian one
    predicted = {"dynamo/a/00001": {"date": "MAY 6, 2025"}, "sroie/b/00001": {"date": "5 JUN 2025"}}
    counts = fields.field_counts(truth, predicted, ("date",), fields.date_orders("MDY"))
    assert counts["dynamo/a/00001"]["date"] == [1, 1, 1] and counts["sroie/b/00001"]["date"] == [1, 1, 1]
    day_first_table = fields.field_counts(truth, predicted, ("date",), fields.date_orders("DMY"))
    assert day_first_table["dynamo/a/00001"]["date"] == [0, 1, 1], "a deployment may set its table's order"
    assert fields.comparable("date", "05/06/2025", "MDY") == "2025-05-06"
    assert fields.comparable("date", "05/06/2025", "DMY") == "2025-06-05"


def test_every_field_a_model_has_a_label_for_is_read_with_its_value_text_and_words():
    words = ["BURGER", "BARN", "(555)", "123-4567", "DATE:", "07/28/2025", "7:42", "PM", "SUBTOTAL", "$12.50",
             "TAX", "1.03", "SAVINGS", "2.00-", "TOTAL", "$13.53", "RETURN", "BY", "08/27/2025"]  # fmt: skip
    tags = ["B-MERCHANT_NAME", "I-MERCHANT_NAME", "B-PHONE_NUMBER", "I-PHONE_NUMBER", "O", "B-DATE", "B-TIME",
            "I-TIME", "O", "B-SUBTOTAL", "O", "B-TAX", "O", "B-DISCOUNT", "O", "B-GRAND_TOTAL", "O", "O",
            "O"]  # fmt: skip
    labels = ["DATE", "DISCOUNT", "GRAND_TOTAL", "MERCHANT_NAME", "PHONE_NUMBER", "SUBTOTAL", "TAX", "TIME"]
    read = fields.read_fields(words, tags, labels, "MDY")
    assert {name: reading.value for name, reading in read.items()} == {
        "merchant": "BURGER BARN",
        "phone": "5551234567",
        "date": "2025-07-28",
        "time": "19:42",
        "subtotal": "12.50",
        "tax": "1.03",
        "discount": "-2.00",
        "total": "13.53",
    }
    assert read["time"].text == "7:42 PM" and read["time"].words == [6, 7]
    # a model that merges TIME into DATE reads the time from the date's words
    merged = [tag.replace("TIME", "DATE").replace("B-DATE", "I-DATE") if "TIME" in tag else tag for tag in tags]
    read = fields.read_fields(words, merged, ["DATE", "GRAND_TOTAL"], "MDY")
    assert read["date"].value == "2025-07-28" and read["time"].value == "19:42"
    # words that give no such value are unreadable (None), never guessed
    read = fields.read_fields(["DATE", "TOTAL"], ["B-DATE", "B-GRAND_TOTAL"], labels, "MDY")
    assert read["date"] == fields.FieldReading("DATE", None, [0]) and read["total"].value is None
    assert fields.unreadable({"dynamo/a/00001": {"date": "DATE", "total": "9.99"}}, ("date", "total")) == {
        "date": 1,
        "total": 0,
    }
