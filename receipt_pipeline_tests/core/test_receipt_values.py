"""Dates, times, amounts and quantities as US and SROIE receipts print them, read one way everywhere."""

from __future__ import annotations

import datetime as dt

import pytest

from receipt_pipeline.core import receipt_values, synthetic
from receipt_pipeline.core.receipt_values import read_amount, read_date, read_quantity, read_time

# every day of two years: days above and below 12, month ends, a leap day
DAYS = [dt.datetime(2024, 1, 1, 7, 5, 9) + dt.timedelta(days=n, minutes=37 * n) for n in range(731)]


@pytest.mark.parametrize("date_format", synthetic._DATE_FORMATS)
def test_every_date_format_the_synthetic_receipts_print_reads_back_as_the_day_printed(date_format):
    for moment in DAYS:
        printed = moment.strftime(date_format).upper()
        assert read_date(printed, "MDY") == moment.date().isoformat(), printed
        assert read_date(f"DATE: {printed}", "MDY") == moment.date().isoformat(), printed


@pytest.mark.parametrize("clock_format", synthetic._CLOCK_FORMATS)
def test_every_clock_format_the_synthetic_receipts_print_reads_back_on_a_24_hour_clock(clock_format):
    for moment in DAYS:
        printed = moment.strftime(clock_format).upper()
        expected = moment.strftime("%H:%M:%S" if "%S" in clock_format else "%H:%M")
        assert read_time(printed) == expected, printed
        assert read_time(f"TIME: {printed}") == expected, printed


@pytest.mark.parametrize(
    ("printed", "iso"),
    [
        ("28/03/2018", "2018-03-28"),
        ("DATE:28-03-18", "2018-03-28"),
        ("01/02/2018", "2018-02-01"),
        ("NO/DATE:K074-001096(06/12/2016)", "2016-12-06"),
        ("20180428/191204", "2018-04-28"),
        ("15 MAR 2018", "2018-03-15"),
        ("15-03-18 10:42", "2018-03-15"),
        ("25-JAN-2018", "2018-01-25"),
        ("12/APR/2018", "2018-04-12"),
        ("OCT 9, 2018", "2018-10-09"),
        ("2018/06/14", "2018-06-14"),
        ("16.03.18", "2018-03-16"),
    ],
)
def test_sroie_dates_read_day_first(printed, iso):
    assert read_date(printed, "DMY") == iso


def test_an_ambiguous_date_takes_the_sources_order_and_an_impossible_one_the_other():
    assert read_date("05/06/2025", "MDY") == "2025-05-06"
    assert read_date("05/06/2025", "DMY") == "2025-06-05"
    # impossible in the source's order: read in the other, never dropped
    assert read_date("07/28/2025", "MDY") == read_date("07/28/2025", "DMY") == "2025-07-28"
    assert read_date("28/07/2025", "MDY") == "2025-07-28"
    # impossible in both, or no year: unreadable, not guessed
    for text in ("13/13/2025", "02/30/2025", "31/02/2025", "07/28", "TOTAL 12.50", "", None):
        assert read_date(text, "MDY") is None and read_date(text, "DMY") is None
    with pytest.raises(ValueError, match="date order"):
        read_date("07/28/2025", "YMD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("printed", "iso"),
    [
        ("JUL 28, 2025", "2025-07-28"),
        ("Jul 28 2025", "2025-07-28"),
        ("Thursday, September 4, 2025", "2025-09-04"),
        ("SEPT. 4TH, 2025", "2025-09-04"),
        ("28-JUL-2025", "2025-07-28"),
        ("28JUL25", "2025-07-28"),
        ("07/28/25 07:42 PM", "2025-07-28"),
        ("2025-07-28T19:42:00", "2025-07-28"),
        ("O7/28/2O25", "2025-07-28"),  # the OCR read zeros as O
    ],
)
def test_us_dates_with_named_months_either_side_of_the_day_and_two_or_four_digit_years(printed, iso):
    assert read_date(printed, "MDY") == iso


@pytest.mark.parametrize(
    ("printed", "time"),
    [
        ("07:42 PM", "19:42"),
        ("7:42PM", "19:42"),
        ("7:42 p.m.", "19:42"),
        ("12:05 AM", "00:05"),
        ("12:30 PM", "12:30"),
        ("19:42:07", "19:42:07"),
        ("TIME: 08:15", "08:15"),
        ("07/28/2025 19:42", "19:42"),
    ],
)
def test_times_read_on_a_24_hour_clock(printed, time):
    assert read_time(printed) == time


def test_an_impossible_time_is_unreadable():
    for text in ("25:00", "13:00 AM", "10:61", "00:15 PM", "12.50", "AMEX"):
        assert read_time(text) is None, text


@pytest.mark.parametrize(
    ("printed", "amount"),
    [
        ("12.50", "12.50"),
        ("$12.50", "12.50"),
        ("$ 12.50", "12.50"),
        ("USD 12.50", "12.50"),
        ("RM12.50", "12.50"),
        ("TOTAL:$43.7", "43.70"),
        ("$1,234.50", "1234.50"),
        ("1,234,567.89", "1234567.89"),
        ("-3.00", "-3.00"),
        ("3.00-", "-3.00"),
        ("3.00-A", "-3.00"),
        ("(3.00)", "-3.00"),
        ("-$3.00", "-3.00"),
        ("$-3.00", "-3.00"),
        ("6.10 T", "6.10"),
        ("6.10 A", "6.10"),
        ("2.99/lb", "2.99"),
        ("CC*7185:RM111.90", "111.90"),
        ("9,00", "9.00"),
        ("3O.42", "30.42"),  # the OCR read a zero as O
        ("6.S0", "6.50"),
        ("12", "12.00"),
    ],
)
def test_amounts_with_signs_codes_separators_and_negatives_in_every_form(printed, amount):
    assert read_amount(printed) == amount


def test_what_is_no_amount_is_unreadable_not_another_number():
    for text in ("TOTAL", "", None, "2.99lb", "6.X0"):
        assert read_amount(text) is None, text
    # a minus between two numbers is a separator, not a sign
    assert read_amount("12-5") == "5.00" and read_amount("2-3.00") == "3.00"


def test_quantities_and_cents():
    assert [read_quantity(text) for text in ("2", "2x", "x3", "QTY 2", "1.23 lb", "1.50", "10", "l2", "EA")] == [
        "2", "2", "3", "2", "1.23", "1.5", "10", "12", None,
    ]  # fmt: skip
    assert receipt_values.amount_cents("-3.00") == -300 and receipt_values.amount_cents("1234.505") == 123451
    assert receipt_values.amount_cents(None) is None


def test_what_an_ocr_misread_is_read_as_printed_and_what_it_cannot_tell_is_not_guessed():
    # a separator or a colon lost, a letter read for a digit or a digit for a letter
    assert read_date("1122/2024", "MDY") == "2024-11-22" and read_date("11/1824", "MDY") == "2024-11-18"
    assert read_date("N0V 0l, 2024", "MDY") == "2024-11-01"
    assert read_time("0716") == "07:16" and read_time("0812 PM") == "20:12" and read_time("0524:07") == "05:24:07"
    assert read_quantity("l") == "1" and read_quantity("Z") == "2"
    # a month and its year, as a card's expiry prints it, is no day; a year in a date is no time
    assert read_date("EXP 12/2025", "MDY") is None
    assert read_time("JUL 28, 2025") is None and read_time("07/28/2025") is None
    # a word with letters that are no misread digits stays what it is
    assert read_amount("TOTAL") is None and read_quantity("EA") is None and read_date("MONDAY", "MDY") is None
