"""Dates, times, amounts and quantities read from the words a receipt prints: the one reader that evaluation,
predictions, ``infer`` and ``predict`` share.

Each reader returns the value in one canonical form (a date as ISO 8601, a time as ``HH:MM[:SS]`` on a 24-hour
clock, an amount or a quantity as a plain decimal string) or None where the text gives no such value: a text it
cannot read is reported as unreadable by the caller, with the text, never guessed.

A numeric date's order depends on who printed it: US receipts (the users' table) print the month first, SROIE's
Malaysian receipts the day first. An ambiguous date (05/06/2025) takes the source's order; one that is impossible
in that order (07/28/2025 read day first) is read in the other; one impossible in both is unreadable.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Literal

DateOrder = Literal["MDY", "DMY"]
DATE_ORDERS: tuple[DateOrder, ...] = ("MDY", "DMY")
# the years a receipt's date may fall in: wider than any receipt, narrow enough to refuse a misread number
YEARS = range(1990, 2100)

_MONTH_NAMES = (
    "JAN(?:UARY)?", "FEB(?:RUARY)?", "MAR(?:CH)?", "APR(?:IL)?", "MAY", "JUNE?", "JULY?", "AUG(?:UST)?",
    "SEP(?:T(?:EMBER)?)?", "OCT(?:OBER)?", "NOV(?:EMBER)?", "DEC(?:EMBER)?",
)  # fmt: skip
_MONTH = "(?<![A-Z])(" + "|".join(_MONTH_NAMES) + r")\.?(?![A-Z])"
_DAY = r"(?<!\d)(\d{1,2})(?:ST|ND|RD|TH)?(?![\d:])"
_YEAR = r"(?<![\d.])(\d{4}|\d{2})(?![\d:])"
_NAMED_SEPARATOR = r"[\s\-/.,']*"
NUMERIC_DATE = re.compile(r"(?<![\d.])(\d{1,4})[/.\-](\d{1,2})[/.\-](\d{2,4})(?![\d])")
# "28 MAR 2018", "28-MAR-18", "28MAR2018"
DAY_FIRST_NAMED = re.compile(_DAY + _NAMED_SEPARATOR + _MONTH + _NAMED_SEPARATOR + _YEAR)
# "JUL 28, 2025", "Thursday, September 4, 2025"
MONTH_FIRST_NAMED = re.compile(_MONTH + _NAMED_SEPARATOR + _DAY + _NAMED_SEPARATOR + _YEAR)
COMPACT_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})(?!\d)")
# a date one of whose separators the OCR lost: "1122/2024", "11/1824"; not "12/2025", a card's expiry month
LOST_SEPARATOR_DATE = re.compile(
    r"(?<![\d/.\-])(?:(\d{2})(\d{2})[/.\-](\d{4})|(\d{2})[/.\-](?!19|20)(\d{2})(\d{2}))(?![\d/.\-])"
)
# what an OCR reads a printed letter of a month's name as: "N0V" is NOV
OCR_LETTERS = str.maketrans({"0": "O", "1": "I", "5": "S", "8": "B", "2": "Z"})
_MISREAD_WORD = re.compile(r"(?<![A-Z\d])([A-Z\d]{3,9})(?![A-Z\d])")

_MERIDIEM = r"(?:\s*([AP])\.?\s?M\.?(?![A-Z])|\s*([AP])(?![A-Z]))?"
TIME = re.compile(r"(?<![\d:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])" + _MERIDIEM)
# a time whose colon the OCR lost: "0716", "0812 PM", "0524:07"; read only where the text holds no date
LOST_COLON_TIME = re.compile(r"(?<![\d:./\-])(\d{2})(\d{2})(?::(\d{2}))?(?![\d:./\-])" + _MERIDIEM)

# a currency printed before or after an amount: a sign, or a code as US and SROIE receipts print them
_CURRENCY = r"(?:[$€£¥]|US\$|USD|RM|MYR|EUR|GBP|CAD|SGD)"
# a number: thousands grouped by commas, a decimal point; or a decimal comma with two places ("9,00")
_NUMBER = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+,\d{2}(?![\d,])|\.\d{2}|\d+)"
# A minus before the amount (not one between two numbers, as in 12-5) or after it ("3.00-", the users' savings).
# The number stands alone: after a currency or no letter, and before no digit, no second letter and no decimal
# point followed by more of the word ("6.S0" is no 6), so a misread word is unreadable, not another amount.
AMOUNT = re.compile(
    r"(\()?(?:(?<![\w.])(-))?(?:"
    + _CURRENCY
    + r"\s?(-)?|(?<![A-Za-z\d.,]))"
    + _NUMBER
    + r"(?!\d|[.,]\w|[A-Za-z]{2})(?:(-)(?!\d))?(\))?",
    re.IGNORECASE,
)
# what an OCR reads a printed digit as: a word of digits and these is a number misread
OCR_DIGITS = str.maketrans({"O": "0", "o": "0", "Q": "0", "l": "1", "I": "1", "|": "1", "S": "5", "s": "5", "B": "8",
                            "Z": "2", "z": "2"})  # fmt: skip
_DIGIT_OR_MISREAD = r"[\dOoQlI|SsBZz]"
_MISREAD_NUMBER = re.compile(
    r"(?:(?<=RM)|(?<=USD)|(?<=MYR)|(?<![A-Za-z]))"
    + f"({_DIGIT_OR_MISREAD}(?:{_DIGIT_OR_MISREAD}|[,./:\\-])*{_DIGIT_OR_MISREAD})(?![A-Za-z])"
)
QUANTITY = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)")


def read_date(text: str | None, order: DateOrder = "MDY") -> str | None:
    """The first date ``text`` prints, as ``YYYY-MM-DD``: numeric (``07/28/2025``, ``28-03-18``, ``2025-07-28``),
    with a named month on either side of the day (``JUL 28, 2025``, ``28 MAR 2018``, ``Thursday, September 4,
    2025``) or compact (``20180428``); prefixes such as ``DATE:`` and a time beside it are passed over. Two-digit
    years are this century's. None where no date can be read."""
    if order not in DATE_ORDERS:
        raise ValueError(f"date order must be one of {DATE_ORDERS}, got {order!r}")
    upper = _month_names_read_right(digits_read_right(text).upper())
    candidates: list[tuple[int, str]] = []
    for match in NUMERIC_DATE.finditer(upper):
        value = _numeric_date(*match.groups(), order)
        if value:
            candidates.append((match.start(), value))
            break
    for pattern, day_first in ((DAY_FIRST_NAMED, True), (MONTH_FIRST_NAMED, False)):
        for match in pattern.finditer(upper):
            first, second, year = match.groups()
            day, month = (first, second) if day_first else (second, first)
            value = _iso(int(year), _month_number(month), int(day))
            if value:
                candidates.append((match.start(), value))
                break
    if candidates:
        return min(candidates)[1]
    for match in COMPACT_DATE.finditer(upper):
        value = _iso(*(int(group) for group in match.groups()))
        if value:
            return value
    for match in LOST_SEPARATOR_DATE.finditer(upper):
        value = _numeric_date(*(group for group in match.groups() if group is not None), order)
        if value:
            return value
    return None


def _month_names_read_right(upper: str) -> str:
    """``upper`` with each word that is a month's name misread (a digit for a letter, "N0V") put right."""

    def fixed(match: re.Match) -> str:
        word = match[1]
        if word.isdigit() or word.isalpha():
            return word
        letters = word.translate(OCR_LETTERS)
        return letters if re.fullmatch(_MONTH, letters) else word

    return _MISREAD_WORD.sub(fixed, upper)


def _numeric_date(first: str, second: str, third: str, order: DateOrder) -> str | None:
    if len(first) == 4:
        return _iso(int(first), int(second), int(third))
    if len(first) > 2:
        return None
    month, day = (int(first), int(second)) if order == "MDY" else (int(second), int(first))
    # an impossible date in the source's order is read in the other; one impossible in both is not a date
    return _iso(int(third), month, day) or _iso(int(third), day, month)


def _month_number(name: str) -> int:
    return next(index for index, pattern in enumerate(_MONTH_NAMES, start=1) if re.fullmatch(pattern, name))


def _iso(year: int, month: int, day: int) -> str | None:
    year = year + 2000 if year < 100 else year
    if year not in YEARS:
        return None
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


def read_time(text: str | None) -> str | None:
    """The first time ``text`` prints, as ``HH:MM`` (or ``HH:MM:SS`` where it prints seconds) on a 24-hour clock:
    ``07:15 PM`` is ``19:15``, ``12:05AM`` is ``00:05``; four digits where the OCR lost the colon (``0716``), in a
    text that holds no date. None where no time can be read (an hour past 12 with AM, a minute past 59)."""
    upper = digits_read_right(text).upper()
    matches = list(TIME.finditer(upper))
    if not matches and read_date(upper) is None:
        matches = list(LOST_COLON_TIME.finditer(upper))
    for match in matches:
        hour, minute, second = int(match[1]), int(match[2]), match[3]
        meridiem = match[4] or match[5]
        if minute > 59 or (second is not None and int(second) > 59) or hour > 23:
            continue
        if meridiem:
            if hour == 0 or (hour > 12 and meridiem == "A"):
                continue
            if hour <= 12:
                hour = hour % 12 + (12 if meridiem == "P" else 0)
        return f"{hour:02d}:{minute:02d}" + (f":{int(second):02d}" if second is not None else "")
    return None


def read_amount(text: str | None) -> str | None:
    """The last amount ``text`` prints, as a decimal string with two places (or more where it prints more):
    ``$1,234.50`` is ``1234.50``; ``-3.00``, ``3.00-``, ``(3.00)`` and ``-$3.00`` are ``-3.00`` (refunds,
    discounts, coupons); a currency sign or code (``RM``, ``USD``), a cue before it (``TOTAL:``, a card number)
    and a tax flag after it (``3.00-A``, ``6.10 T``) are passed over. None where it prints no number."""
    matches = list(AMOUNT.finditer(digits_read_right(text)))
    if not matches:
        return None
    match = matches[-1]
    opened, minus_before, minus_inside, number, minus_after, closed = match.groups()
    if "," in number and "." not in number and re.fullmatch(r"\d+,\d{2}", number):
        number = number.replace(",", ".")  # a decimal comma: three digits would make it a thousands separator
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    negative = bool(minus_before or minus_inside or minus_after or (opened and closed))
    places = max(2, -value.as_tuple().exponent)  # type: ignore[operator]
    return f"{-value if negative and value else value:.{places}f}"


def read_quantity(text: str | None) -> str | None:
    """The first quantity ``text`` prints, as a plain decimal: ``2``, ``2x`` and ``QTY 2`` are ``2``; ``1.23 lb``
    is ``1.23``; ``1.50`` is ``1.5``; a word that is one misread digit (``l``, ``Z``) is that digit, a quantity being
    a number. None where it prints no number."""
    match = QUANTITY.search(digits_read_right(text, whole_words=True))
    if not match:
        return None
    return format(Decimal(match[1]).normalize(), "f")


def digits_read_right(text: str | None, whole_words: bool = False) -> str:
    """``text`` with each number that an OCR misread put right: in a run of digits, separators and letters that
    OCRs read digits as (O, l, S, B, Z...), holding at least one digit and nothing else, the letters become the
    digits they stand for ("3O.42" is 30.42, "O7/28/2O25" a date). A word with any other letter is left as it is.
    ``whole_words``: a word made only of such letters counts too (for a text known to be a number)."""

    def fixed(match: re.Match) -> str:
        run = match[1]
        return run.translate(OCR_DIGITS) if any(c.isdigit() for c in run) else run

    repaired = _MISREAD_NUMBER.sub(fixed, text or "")
    if whole_words:
        repaired = re.sub(rf"(?<!\S){_DIGIT_OR_MISREAD}+(?!\S)", lambda m: m[0].translate(OCR_DIGITS), repaired)
    return repaired


def amount_cents(value: str | None) -> int | None:
    """A value :func:`read_amount` gave, in cents (rounded half up), for sums; None for None."""
    if value is None:
        return None
    return int((Decimal(value) * 100).to_integral_value(rounding="ROUND_HALF_UP"))
