"""Synthetic receipts in the users' real table schema: the demo's data and the scale generator.

A receipt comes from one of 53 merchants of ten families of US stores (grocery, supermarket, warehouse club,
discount store, pharmacy, drive-through, butcher, restaurant, hardware, cafe), each family a TOML file in
``receipt_layouts/`` (:mod:`receipt_pipeline.core.receipt_layouts`, docs/synthetic.md): its products and what its
receipts print (item numbers, tax flags, weighed items, quantity lines, savings and deposits, member numbers, card
blocks, restated totals, return dates, surveys, dates under a column header or written out). Each merchant prints
with its own printer, drawn from its name alone, so it is the same in every table and for every seed: the store's
address and phone, header alignment, line order and name size, the wording around the figures ("TOTAL" or "AMOUNT
DUE"), the footer, its family's item style, the date and time format and place, the separators, the line width,
margin and price column. As on the users' data, a random split then puts a merchant's template in train and in
test, and a split that holds whole merchants out does not (see ``bio_receipt_split``'s ``merchant`` strategy).

What varies per receipt: the items, prices and quantities, savings, payment, dates, the print size, the box
jitter, the skew, the crop (on some, cut through the price column), OCR noise and the labels. A receipt is composed
as printed lines, laid out in pixels on the merchant's thermal-printer grid, turned by a small skew angle and
normalised to 0..1 with y pointing UP, as the users' OCR stores it. OCR noise (confusable characters, misspellings,
dropped punctuation, split and merged words, specks) lowers the confidence of the words it touches; it spares the
merchant's name, printed large at the top. Labels go on the words they describe, with a realistic mix of
validation statuses and, when asked, a share of wrong VALID labels (``label_noise``).

Everything is a generator: receipt ``n`` of a seed depends only on ``(seed, n)``, and nothing keeps
more than one receipt in memory, so a million receipts cost the same memory as one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from receipt_pipeline.core import aws, dynamo_items, receipt_layouts
from receipt_pipeline.core.errors import ExplainedError

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_UNLABELLED_SHARE",
    "ExpectedTruth",
    "PrintedFacts",
    "PrintedItem",
    "SyntheticLabel",
    "SyntheticLine",
    "SyntheticReceipt",
    "SyntheticWord",
    "WriteFailed",
    "WriteStats",
    "expected_truth",
    "expected_valid_label_counts",
    "iter_receipt_items",
    "iter_synthetic_receipts",
    "receipt_items",
    "seed_synthetic",
    "write_items",
]

DEFAULT_UNLABELLED_SHARE = 0.1
MIN_WORDS, MAX_WORDS = 40, 400
MIN_ITEM_LINES, MAX_ITEM_LINES = 3, 40
MAX_SKEW_DEGREES = 2.0
CUT_CROP_SHARE = 0.12  # receipts whose photo's crop cuts through the price column
RAW_BUCKET = "raw-receipt-images"
# uuid5 namespace for image ids, so that ids are stable across runs and machines
IMAGE_NAMESPACE = uuid.UUID("5f0b7c3e-2d1a-4c55-9a47-7e1f0c2b9d10")

Point = tuple[float, float]
Corners = tuple[Point, Point, Point, Point]  # top-left, top-right, bottom-left, bottom-right

# ============================================================================================ model


@dataclass(frozen=True, slots=True)
class SyntheticLabel:
    label: str
    validation_status: str
    timestamp_added: str
    label_proposed_by: str
    reasoning: str | None
    label_consolidated_from: str | None


@dataclass(frozen=True, slots=True)
class SyntheticWord:
    word_id: int
    text: str  # as the OCR read it, noise included
    printed_text: str  # as the printer printed it
    truth: str | None  # the label the word really carries, whatever its label items say
    corners: Corners  # normalised, y up
    confidence: float  # two decimals
    is_noise: bool
    embedding_status: str
    labels: tuple[SyntheticLabel, ...]
    item: int | None = None  # the line item whose word it is (PrintedFacts.items), if any

    @property
    def valid_labels(self) -> tuple[str, ...]:
        return tuple(label.label for label in self.labels if label.validation_status == "VALID")


@dataclass(frozen=True, slots=True)
class SyntheticLine:
    line_id: int
    words: tuple[SyntheticWord, ...]
    corners: Corners
    confidence: float

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)


@dataclass(frozen=True, slots=True)
class PrintedItem:
    product: str
    quantity: str | None  # None where the item's lines print no quantity (one piece)
    unit_price: str | None  # None where they print no unit price
    line_total: str


@dataclass(frozen=True, slots=True)
class PrintedFacts:
    """What the receipt printed, before OCR noise and labelling: what a perfect reading of it gives."""

    date: str  # ISO 8601
    time: str  # HH:MM, or HH:MM:SS where the merchant prints seconds, on a 24-hour clock
    subtotal: str
    tax: str
    tip: str | None
    total: str
    items: tuple[PrintedItem, ...]


@dataclass(frozen=True, slots=True)
class SyntheticReceipt:
    index: int  # position in the seed's sequence
    image_id: str
    receipt_id: int
    width: int  # pixels
    height: int
    angle_degrees: float
    timestamp_added: str
    merchant: str
    lines: tuple[SyntheticLine, ...]
    receipts_in_image: int = 1
    facts: PrintedFacts | None = None
    family: str = ""  # of receipt_layouts
    features: frozenset[str] = frozenset()  # what it prints of what real US receipts print (see receipt_layouts)

    def words(self) -> Iterator[SyntheticWord]:
        for line in self.lines:
            yield from line.words

    @property
    def has_valid_label(self) -> bool:
        return any(word.valid_labels for word in self.words())


# ======================================================================================= vocabulary


# The families of stores, each from its file in receipt_layouts/: merchants, products and what they print
_FAMILIES = receipt_layouts.families()
_FAMILY_OF = {merchant: family for family in _FAMILIES for merchant in family.merchants}

_STREETS = ("MAIN ST", "OAK AVE", "BROADWAY", "ELM ST", "MARKET ST", "PARK BLVD", "SUNSET BLVD", "MAPLE DR",
            "CEDAR LN", "2ND AVE", "HIGHLAND RD", "LAKE SHORE DR", "STATE ST", "MILL RD")  # fmt: skip
_CITIES = (("SPRINGFIELD", "IL"), ("PORTLAND", "OR"), ("AUSTIN", "TX"), ("SANTA BARBARA", "CA"),
           ("DENVER", "CO"), ("MADISON", "WI"), ("ASHEVILLE", "NC"), ("SEATTLE", "WA"), ("BURLINGTON", "VT"),
           ("ANN ARBOR", "MI"), ("TUCSON", "AZ"), ("SALEM", "MA"))  # fmt: skip
_CARDS = ("VISA", "MASTERCARD", "AMEX", "DISCOVER", "DEBIT")
_CASHIERS = ("MIKE", "ANA", "JORDAN", "PRIYA", "SAM", "LEE", "ROSA", "TOM")

# A merchant's template takes one of each: its printer prints the same words around the figures every time.
_SUBTOTAL_WORDING = ("SUBTOTAL", "SUB TOTAL", "SUB-TOTAL", "ITEM TOTAL")
_TAX_WORDING = ("TAX", "SALES TAX", "TAX {rate}%", "TAX @ {rate}%")
_TIP_WORDING = ("TIP", "GRATUITY", "TIP AMOUNT")
_TOTAL_WORDING = ("TOTAL", "AMOUNT DUE", "GRAND TOTAL", "BALANCE DUE", "TOTAL DUE")
_DISCOUNT_WORDING = ("MEMBER SAVINGS", "DISCOUNT", "SALE", "YOU SAVED", "INSTANT SAVINGS")
_COUPON_WORDING = ("COUPON", "MFR COUPON", "PROMO")
_CASH_WORDING = ("CASH", "CASH TEND", "CASH TENDERED")  # the first word names the payment method
_CHANGE_WORDING = ("CHANGE", "CHANGE DUE", "YOUR CHANGE")
_AUTH_WORDING = ("AUTH CODE {code} APPROVED", "APPROVAL {code}", "AUTH: {code}")
_LOYALTY_WORDING = ("MEMBER ID:", "REWARDS #", "LOYALTY NO", "CLUB CARD")
_HOURS_WORDING = ("OPEN {opens}AM-{closes}PM DAILY", "HOURS {opens}AM-{closes}PM", "MON-SUN {opens}AM-{closes}PM")
_REGISTER_WORDING = ("REG {register:02d} TRAN {transaction} CASHIER {cashier}",
                     "STORE {store} REG {register} TRANS {transaction}", "CASHIER: {cashier}",
                     "TERMINAL {register:03d} OPERATOR {operator}", "ORDER #{transaction}",
                     "SERVER: {cashier}")  # fmt: skip
_PHONE_PREFIXES = ("TEL:", "PHONE", "PH:", "")
_DATE_FORMATS = ("%m/%d/%Y", "%m/%d/%y", "%Y-%m-%d", "%b %d, %Y", "%d-%b-%Y")
_CLOCK_FORMATS = ("%I:%M %p", "%H:%M:%S", "%I:%M%p", "%H:%M")
_CARD_MASKS = ("XXXX", "****", "************")
_THANKS = ("THANK YOU FOR SHOPPING WITH US", "PLEASE COME AGAIN", "HAVE A GREAT DAY", "THANK YOU",
           "THANKS FOR VISITING", "WE APPRECIATE YOUR BUSINESS")  # fmt: skip
_POLICIES = ("RETURNS ACCEPTED WITHIN 30 DAYS", "WITH ORIGINAL RECEIPT ONLY", "ALL SALES FINAL",
             "EXCHANGES WITHIN 14 DAYS", "KEEP THIS RECEIPT FOR YOUR RECORDS", "CUSTOMER COPY")  # fmt: skip
_PROMOTIONS = ("TELL US HOW WE DID TODAY", "FOR A CHANCE TO WIN A $500 GIFT CARD", "JOIN OUR REWARDS PROGRAM",
               "ASK ABOUT OUR LOYALTY CARD", "FOLLOW US ONLINE")  # fmt: skip

# wrong labels a labeller plausibly proposes for a word whose true label is the key
_CONFUSABLE_LABELS = {
    "MERCHANT_NAME": ("ADDRESS_LINE", "WEBSITE"),
    "ADDRESS_LINE": ("MERCHANT_NAME", "PHONE_NUMBER"),
    "PHONE_NUMBER": ("LOYALTY_ID", "ADDRESS_LINE"),
    "WEBSITE": ("MERCHANT_NAME",),
    "STORE_HOURS": ("TIME",),
    "DATE": ("TIME",),
    "TIME": ("DATE", "STORE_HOURS"),
    "PRODUCT_NAME": ("MERCHANT_NAME",),
    "QUANTITY": ("UNIT_PRICE",),
    "UNIT_PRICE": ("LINE_TOTAL", "QUANTITY"),
    "LINE_TOTAL": ("UNIT_PRICE", "SUBTOTAL"),
    "SUBTOTAL": ("GRAND_TOTAL", "LINE_TOTAL"),
    "TAX": ("LINE_TOTAL",),
    "TIP": ("TAX",),
    "GRAND_TOTAL": ("SUBTOTAL", "LINE_TOTAL"),
    "PAYMENT_METHOD": ("LOYALTY_ID",),
    "LOYALTY_ID": ("PHONE_NUMBER",),
    "DISCOUNT": ("COUPON",),
    "COUPON": ("DISCOUNT",),
    "CHANGE": ("GRAND_TOTAL",),
}
# older label names that the users' consolidation merged into today's vocabulary
_LEGACY_LABELS = {"GRAND_TOTAL": "TOTAL", "LINE_TOTAL": "PRICE", "DATE": "DATE_TIME", "ADDRESS_LINE": "ADDRESS",
                  "MERCHANT_NAME": "STORE_NAME", "PHONE_NUMBER": "PHONE"}  # fmt: skip
_PROPOSERS = ("ai_label_suggestion", "pattern_matcher", "human_review", "validation_agent")

# OCR confusions: a digit read as a letter or the reverse
_CONFUSABLE_CHARACTERS = {"O": "0", "0": "O", "l": "1", "1": "l", "I": "1", "S": "5", "5": "S", "B": "8",
                          "8": "B", "Z": "2", "2": "Z"}  # fmt: skip
_DROPPABLE_PUNCTUATION = ".,:;()-#/"
_SPECKS = (".", "'", ",", "~", "|", "`")

# ======================================================================================= templates


@dataclass(frozen=True)
class _Template:
    """How one merchant's receipts look, whoever buys what: its store, its printer and its wording."""

    # the paper, in printer columns
    columns: int  # characters in a full line
    amount_end: int  # where flush-right amounts end; short of ``columns`` where the merchant keeps a margin
    margin: int  # before left-aligned text
    line_spacing: float  # blank space between lines, in character widths
    # the header
    header_centred: bool
    name_scale: float  # the merchant's name is printed larger than the body text
    header_blocks: tuple[str, ...]  # below the name, in order: "address", "phone", maybe "website", "hours"
    address: tuple[str, str]  # the store's street line and city line
    phone: tuple[str, ...]  # the store's number, in the words this merchant prints it as
    phone_prefix: str
    website: str
    hours: str
    register: str | None  # a format filled per receipt; None where the merchant prints no register line
    store_number: int
    date_format: str
    clock_format: str
    date_keywords: bool  # "DATE:" and "TIME:" before them
    date_at_top: bool  # or at the bottom, below the payment
    time_flush_right: bool
    # the body
    rule: str  # the separator line
    rules_at: frozenset[str]  # where separators go: "header" (below it), "totals" and "footer" (above them)
    item_style: receipt_layouts.ItemStyle  # one of its family's
    sku_digits: int  # of its item numbers
    name_wrap: int | None  # the name column's width: a longer product name goes on on the next row
    quantity_mark: str  # between the quantity and the unit price: "2 @ 1.99"
    item_indent: int  # of the second line of a two-line item
    quantity_column: int  # where the quantity and the unit price start, in the "columns" layout
    unit_column: int
    subtotal_words: str
    tax_words: str
    tip_words: str
    total_words: str
    discount_words: str
    coupon_words: str
    cash_words: str
    change_words: str
    tax_rate: float  # the store's locale sets it
    card_mask: str
    auth: str | None  # a format, or None where the card terminal prints no approval line
    loyalty: str | None  # the words before a member's number, or None where the merchant has no programme
    loyalty_mark: str
    # the footer
    footer: tuple[str, ...]  # on every receipt
    spare_footer: tuple[str, ...]  # added in order while a receipt is shorter than MIN_WORDS
    footer_centred: bool


@functools.cache
def _template(merchant: str) -> _Template:
    # A string seed is hashed with SHA-512, not with the salted hash(): the name alone decides the template,
    # in every process, table and seed.
    rng = random.Random(f"merchant-template:{merchant}")
    columns = rng.choice((32, 36, 40, 42, 44, 48))
    amount_end = columns - rng.choice((0, 0, 2, 4, 6))
    margin = rng.choice((0, 0, 1, 2, 3))
    blocks = ["address", "phone"]
    if rng.random() < 0.35:
        blocks.append("website")
    if rng.random() < 0.25:
        blocks.append("hours")
    rng.shuffle(blocks)
    city, state = rng.choice(_CITIES)
    area, exchange, number = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    phone_style = rng.randrange(3)
    if phone_style == 0:
        phone: tuple[str, ...] = (f"({area})", f"{exchange}-{number:04d}")
    else:
        separator = "-" if phone_style == 1 else "."
        phone = (f"{area}{separator}{exchange}{separator}{number:04d}",)
    domain = merchant.lower().replace(" ", "").replace("'", "")
    thanks, policies, promotions = (list(pool) for pool in (_THANKS, _POLICIES, _PROMOTIONS))
    for pool in (thanks, policies, promotions):
        rng.shuffle(pool)
    footer_lines = [thanks.pop(), *rng.sample((policies.pop(), promotions.pop()), 2)]
    printed_footer = 1 if rng.random() < 0.5 else 2
    spare_footer = footer_lines[printed_footer:] + thanks + policies + promotions
    # the columns layout needs room for a product name before the quantity column
    rng.random()  # the draw that chose an item layout before families did: the choices after it stay as they were
    rule_character = rng.choice("-=*_~.")
    # drawn apart from the rest, so that the merchants' other choices stay what they were before names wrapped
    wrap = random.Random(f"merchant-name-wrap:{merchant}")
    name_wrap = wrap.choice((10, 12, 14)) if wrap.random() < 0.3 else None
    style_rng = random.Random(f"merchant-item-style:{merchant}")
    family = _FAMILY_OF[merchant]
    # The family's merchants take its styles in turn, each as many times as its weight, so that every style is
    # printed; a style with tab columns needs room for a product name before the quantity column.
    turns = [style for style in family.styles for _ in range(max(1, round(style.weight)))]
    item_style = turns[family.merchants.index(merchant) % len(turns)]
    if _tabbed(item_style) and amount_end < 38:
        item_style = next((style for style in turns if not _tabbed(style)), item_style)
    return _Template(
        columns=columns,
        amount_end=amount_end,
        margin=margin,
        line_spacing=rng.uniform(0.5, 0.8),
        header_centred=rng.random() < 0.7,
        name_scale=rng.choice((1.25, 1.5, 1.75, 2.0)),
        header_blocks=tuple(blocks),
        address=(
            f"{rng.randint(10, 9899)} {rng.choice(_STREETS)}",
            f"{city}{rng.choice((',', ''))} {state} {rng.randint(10000, 99899)}",
        ),
        phone=phone,
        phone_prefix=rng.choice(_PHONE_PREFIXES),
        website=rng.choice(("www.", "")) + domain + ".com",
        hours=rng.choice(_HOURS_WORDING).format(opens=rng.randint(6, 9), closes=rng.randint(8, 11)),
        register=rng.choice(_REGISTER_WORDING) if rng.random() < 0.5 else None,
        store_number=rng.randint(1, 999),
        date_format=rng.choice(_DATE_FORMATS),
        clock_format=rng.choice(_CLOCK_FORMATS),
        date_keywords=rng.random() < 0.3,
        date_at_top=rng.random() < 0.75,
        time_flush_right=rng.random() < 0.3,
        rule=rule_character * (columns - 2 * margin - rng.choice((0, 4, 8))),
        rules_at=frozenset(
            place for place, share in (("header", 0.8), ("totals", 0.4), ("footer", 0.4)) if rng.random() < share
        ),
        item_style=item_style,
        sku_digits=style_rng.choice((6, 7, 9, 12)),
        name_wrap=name_wrap,
        quantity_mark=rng.choice(("@", "x", "X", "AT")),
        item_indent=rng.choice((2, 3, 4)),
        quantity_column=amount_end - rng.choice((16, 18)),
        unit_column=amount_end - rng.choice((11, 12)),
        subtotal_words=rng.choice(_SUBTOTAL_WORDING),
        tax_words=rng.choice(_TAX_WORDING),
        tip_words=rng.choice(_TIP_WORDING),
        total_words=rng.choice(_TOTAL_WORDING),
        discount_words=rng.choice(_DISCOUNT_WORDING),
        coupon_words=rng.choice(_COUPON_WORDING),
        cash_words=rng.choice(_CASH_WORDING),
        change_words=rng.choice(_CHANGE_WORDING),
        tax_rate=rng.choice((0.0, 0.0475, 0.06, 0.0725, 0.0825, 0.0875, 0.1025)),
        card_mask=rng.choice(_CARD_MASKS),
        auth=rng.choice(_AUTH_WORDING) if rng.random() < 0.5 else None,
        loyalty=rng.choice(_LOYALTY_WORDING) if rng.random() < 0.6 else None,
        loyalty_mark=rng.choice(("*****", "#")),
        footer=tuple(footer_lines[:printed_footer]),
        spare_footer=tuple(spare_footer),
        footer_centred=rng.random() < 0.8,
    )


def _tabbed(style: receipt_layouts.ItemStyle) -> bool:
    return any(word.tab for line in style.lines + style.several for word in line.left)


# ===================================================================================== composition


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    label: str | None = None
    is_amount: bool = False
    is_noise: bool = False
    item: int | None = None  # the line item it belongs to, numbered from 0 down the receipt


@dataclass(slots=True)
class _PrintedLine:
    left: list[_Token]
    right: list[_Token] = dataclasses.field(default_factory=list)  # flush right (amounts)
    centred: bool = False
    indent: int = 0  # columns
    scale: float = 1.0  # font size relative to the body text
    gap_before: float = 0.0  # extra blank space above, in lines
    tabbed: list[tuple[int, _Token]] = dataclasses.field(default_factory=list)  # at a column, after ``left``

    def word_count(self) -> int:
        return len(self.left) + len(self.tabbed) + len(self.right)


def _money(cents: int) -> str:
    return f"{cents / 100:.2f}" if cents >= 0 else f"-{-cents / 100:.2f}"


def _amount(cents: int, label: str | None) -> _Token:
    return _Token(_money(cents), label, is_amount=True)


def _words(text: str, label: str | None = None) -> list[_Token]:
    return [_Token(word, label) for word in text.split()]


def _weighted(rng: random.Random, options: Sequence[tuple[Any, float]]) -> Any:
    values, weights = zip(*options, strict=True)
    return rng.choices(values, weights)[0]


def _header(rng: random.Random, merchant: str, template: _Template) -> list[_PrintedLine]:
    def header_line(tokens: list[_Token], scale: float = 1.0) -> _PrintedLine:
        return _PrintedLine(tokens, centred=template.header_centred, indent=template.margin, scale=scale)

    lines = [header_line(_words(merchant, "MERCHANT_NAME"), scale=template.name_scale)]
    for block in template.header_blocks:
        if block == "address":
            lines.extend(header_line(_words(address, "ADDRESS_LINE")) for address in template.address)
        elif block == "phone":
            phone = [_Token(word, "PHONE_NUMBER") for word in template.phone]
            lines.append(header_line(_words(template.phone_prefix) + phone))
        elif block == "website":
            lines.append(header_line([_Token(template.website, "WEBSITE")]))
        else:
            lines.append(header_line(_words(template.hours, "STORE_HOURS")))
    if template.register:
        register = template.register.format(
            register=rng.randint(1, 12),
            transaction=rng.randint(1000, 9999),
            cashier=rng.choice(_CASHIERS),
            operator=rng.randint(10, 99),
            store=template.store_number,
        )
        lines.append(_PrintedLine(_words(register), indent=template.margin, gap_before=0.5))
    return lines


def _date_line(template: _Template, printed_at: datetime) -> _PrintedLine:
    date_keyword, time_keyword = ("DATE:", "TIME:") if template.date_keywords else ("", "")
    date = _words(date_keyword) + _words(printed_at.strftime(template.date_format).upper(), "DATE")
    clock = _words(time_keyword) + _words(printed_at.strftime(template.clock_format).upper(), "TIME")
    if template.time_flush_right:
        return _PrintedLine(date, clock, indent=template.margin)
    return _PrintedLine(date + clock, indent=template.margin)


# the features of real US receipts a printed field shows (the coverage table in BENCHMARKS.md counts them)
_FIELD_FEATURES = {
    "sku": "item numbers", "plu": "item numbers", "flag": "tax flags", "weight": "weighed items",
    "saving": "savings lines", "coupon": "coupons", "member": "member numbers", "aid": "card blocks",
    "expiry": "return policies and coupons with their dates", "hours": "store hours", "website": "websites",
    "survey": "surveys", "long_date": "long-form dates",
}  # fmt: skip


def _render(
    line: receipt_layouts.LineTemplate,
    values: Mapping[str, str],
    template: _Template,
    features: set[str],
    item: int | None = None,
    name: Sequence[_Token] = (),
) -> _PrintedLine:
    """A template line filled with ``values``: a word whose fields are all empty is not printed."""
    left: list[_Token] = []
    tabbed: list[tuple[int, _Token]] = []
    right: list[_Token] = []
    stops = iter((template.quantity_column, template.unit_column))
    for part, words in ((left, line.left), (right, line.right)):
        for word in words:
            if word.is_name:
                part.extend(name)
                continue
            text = word.text.format_map(values)
            data = [field for field in word.fields if field != "mark"]
            if not text.strip() or (data and all(not values[field] for field in data)):
                continue
            features.update(_FIELD_FEATURES[field] for field in word.fields if field in _FIELD_FEATURES)
            label = word.label
            owner = item if label in _ITEM_WORD_LABELS else None
            tokens = [_Token(piece, label, is_amount=word.is_amount, item=owner) for piece in text.split()]
            if part is left and (word.tab or tabbed):
                tabbed.extend((next(stops, 0) if word.tab else 0, token) for token in tokens)
            else:
                part.extend(tokens)
    indent = template.margin + (template.item_indent if line.indented else 0)
    return _PrintedLine(left, right, indent=indent, tabbed=tabbed)


_ITEM_WORD_LABELS = frozenset({"PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL"})


def _block_lines(
    rng: random.Random,
    merchant: str,
    family: receipt_layouts.Family,
    place: str,
    values: Mapping[str, str],
    template: _Template,
    features: set[str],
    paid_by: str = "",
) -> list[_PrintedLine]:
    lines = []
    for number, block in enumerate(family.blocks):
        if block.place != place or (block.when and block.when != paid_by):
            continue
        # a merchant's printer prints its blocks every time or never; a customer's (a member number) varies
        draw = _merchant_draw(merchant, number) if block.each == "merchant" else rng.random()
        if draw >= block.share:
            continue
        if block.feature:
            features.add(block.feature)
        rendered = [_render(line, values, template, features) for line in block.lines]
        centred = {"header": template.header_centred, "footer": template.footer_centred}.get(place, False)
        for printed in rendered:
            printed.centred = centred
        lines.extend(printed for printed in rendered if printed.word_count())
    return lines


@functools.cache
def _merchant_draw(merchant: str, block: int) -> float:
    return random.Random(f"merchant-block:{merchant}:{block}").random()


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _item_lines(
    rng: random.Random, family: receipt_layouts.Family, template: _Template, count: int, features: set[str]
) -> tuple[list[_PrintedLine], list[PrintedItem], int, int]:
    """The item lines of ``count`` purchases, what each one printed, the savings printed under them (cents,
    negative) and the deposits (cents, charged on top of the subtotal)."""
    lines: list[_PrintedLine] = []
    items: list[PrintedItem] = []
    savings = deposits = 0
    style = template.item_style
    for _ in range(count):
        weighed = bool(family.weighed) and rng.random() < len(family.weighed) / (
            len(family.weighed) + len(family.products)
        )
        product = rng.choice(family.weighed if weighed else family.products)
        number = len(items)
        code = zlib.crc32(product.encode())
        taxable = code % 1000 < family.taxable_share * 1000
        values = {
            "mark": template.quantity_mark,
            "sku": f"{code % 10**template.sku_digits:0{template.sku_digits}d}",
            "plu": str(3000 + code % 2000),
            "flag": family.taxable_flag if taxable else family.exempt_flag,
            "saving": "",
            "coupon": "",
            "deposit": "",
            "pounds": "lb" if weighed else "",
        }
        if weighed:
            weight = Decimal(rng.randint(25, 350)) / 100
            unit_cents = _price_cents(rng, product, family.pound_cents)
            total = round(weight * Decimal(unit_cents) / 100, 2)
            values |= {"weight": f"{weight:.2f}", "qty": "", "unit": _money(unit_cents), "total": f"{total:.2f}"}
            printed_lines = family.weighed_lines
        else:
            quantity = _weighted(rng, ((1, 0.62), (2, 0.2), (3, 0.08), (4, 0.05), (6, 0.03), (12, 0.02)))
            unit_cents = _price_cents(rng, product, family.price_cents)
            values |= {"weight": "", "qty": str(quantity), "unit": _money(unit_cents),
                       "total": _money(quantity * unit_cents)}  # fmt: skip
            printed_lines = style.several if quantity > 1 and style.several else style.lines
        head, wrapped = _wrapped_name(product, template.name_wrap, number)
        printed_fields: set[str] = set()
        for line in printed_lines:
            printed = _render(line, values, template, features, number, head if "name" in line.fields else ())
            lines.append(printed)
            printed_fields |= line.fields
            if "name" in line.fields and wrapped:
                # the rest of the name goes on in the name's column, indented under it
                before = printed.left[: printed.left.index(head[0])]
                column = printed.indent + sum(len(token.text) + 1 for token in before)
                lines.append(_PrintedLine(wrapped, indent=column + template.item_indent))
            if line.left and line.left[0].fields in (("qty",), ("weight",)):
                first = line.left[1:2]
                if first and first[0].is_name:
                    features.add("quantity first on the line")
                elif "total" not in line.fields and "name" not in line.fields:
                    features.add("quantity on its own line")
        amount = "weight" if weighed else "qty"
        quantity_read = f"{Decimal(values[amount]).normalize():f}" if amount in printed_fields else None  # 2.40 is 2.4
        items.append(PrintedItem(
            product,
            quantity_read,
            values["unit"] if "unit" in printed_fields else None,
            values["total"],
        ))  # fmt: skip
        total_cents = round(Decimal(values["total"]) * 100)
        for extra in family.item_extras:
            if extra.after and not set(product.split()) & set(extra.after):
                continue
            if rng.random() >= extra.share:
                continue
            if extra.price_cents[1]:  # a deposit charged with the product, on top of the subtotal
                deposit = rng.randint(*extra.price_cents)
                lines.extend(_render(line, values | {"deposit": _money(deposit)}, template, features)
                             for line in extra.lines)  # fmt: skip
                features.add(extra.feature)
                deposits += deposit
                continue
            saving = min(total_cents // 4, rng.randint(20, 300))
            if saving <= 0:
                continue
            extra_values = values | {"saving": _money(saving), "coupon": _money(saving)}
            lines.extend(_render(line, extra_values, template, features) for line in extra.lines)
            savings -= saving
    return lines, items, savings, deposits


def _wrapped_name(product: str, width: int | None, item: int) -> tuple[list[_Token], list[_Token]]:
    """The name's words on the item's row and those wrapped onto the next: words past ``width`` characters wrap,
    the first word never."""
    words = product.split()
    head = len(words)
    if width is not None:
        head = 1
        while head < len(words) and len(" ".join(words[: head + 1])) <= width:
            head += 1
    return (
        [_Token(word, "PRODUCT_NAME", item=item) for word in words[:head]],
        [_Token(word, "PRODUCT_NAME", item=item) for word in words[head:]],
    )


def _price_cents(rng: random.Random, product: str, price_range: tuple[int, int]) -> int:
    # a product keeps roughly its price across receipts: a list price from its name, then +-10%
    low, high = price_range
    list_price = low + zlib.crc32(product.encode()) % (high - low)
    return max(low, round(list_price * rng.uniform(0.9, 1.1)))


def _totals(
    rng: random.Random, family: receipt_layouts.Family, template: _Template, items_cents: int, deposits: int = 0
) -> tuple[list[_PrintedLine], dict[str, str | None]]:
    """The lines from the receipt's savings to its total, and the subtotal, tax, tip and total they print (the
    total with the deposits printed under the items)."""

    def line(words: str, cents: int, label: str, gap_before: float = 0.0) -> _PrintedLine:
        return _PrintedLine(_words(words), [_amount(cents, label)], indent=template.margin, gap_before=gap_before)

    lines: list[_PrintedLine] = []
    subtotal = items_cents
    if rng.random() < 0.2:
        discount = -min(items_cents // 4, rng.randint(50, 500))
        lines.append(line(template.discount_words, discount, "DISCOUNT"))
        subtotal += discount
    if rng.random() < 0.1:
        coupon = -min(items_cents // 4, rng.randint(25, 300))
        lines.append(line(f"{template.coupon_words} SAVE{rng.randint(1, 30)}", coupon, "COUPON"))
        subtotal += coupon
    tax = round(subtotal * template.tax_rate)
    lines.append(line(template.subtotal_words, subtotal, "SUBTOTAL", gap_before=0.5))
    lines.append(line(template.tax_words.format(rate=f"{template.tax_rate * 100:.2f}"), tax, "TAX"))
    tip = 0
    if family.tips and rng.random() < 0.6:
        tip = round(subtotal * rng.choice((0.15, 0.18, 0.2, 0.22)))
        lines.append(line(template.tip_words, tip, "TIP"))
    total = subtotal + tax + deposits + tip
    lines.append(line(template.total_words, total, "GRAND_TOTAL"))
    amounts = {"subtotal": _money(subtotal), "tax": _money(tax), "tip": _money(tip) if tip else None}
    return lines, amounts | {"total": _money(total)}


def _payment(rng: random.Random, template: _Template, total_cents: int) -> tuple[str, list[_PrintedLine], dict]:
    """How the receipt was paid ("cash" or "card"), the lines saying so, and the values the family's blocks print."""
    margin = template.margin
    if rng.random() < 0.25:
        tendered = -(-total_cents // 500) * 500 + rng.choice((0, 0, 500, 1500))
        cash, *tender = template.cash_words.split()
        lines = [
            _PrintedLine([_Token(cash, "PAYMENT_METHOD"), *(_Token(word) for word in tender)],
                         [_amount(tendered, None)], indent=margin, gap_before=0.5),
            _PrintedLine(_words(template.change_words), [_amount(tendered - total_cents, "CHANGE")], indent=margin),
        ]  # fmt: skip
        return "cash", lines, {"card": cash, "last4": "", "tendered": _money(tendered),
                               "change": _money(tendered - total_cents)}  # fmt: skip
    card = rng.choice(_CARDS)
    masked = template.card_mask + f"{rng.randint(0, 9999):04d}"
    lines = [
        _PrintedLine([_Token(card, "PAYMENT_METHOD"), _Token(masked, "PAYMENT_METHOD")], [_amount(total_cents, None)],
                     indent=margin, gap_before=0.5),
    ]  # fmt: skip
    if template.auth:
        lines.append(_PrintedLine(_words(template.auth.format(code=rng.randint(100000, 999999))), indent=margin))
    return "card", lines, {"card": card, "last4": masked, "tendered": _money(total_cents), "change": "0.00"}


def _loyalty(rng: random.Random, template: _Template) -> list[_PrintedLine]:
    # the merchant's programme, when this customer is a member
    if template.loyalty is None or rng.random() >= 0.4:
        return []
    number = template.loyalty_mark + str(rng.randint(10**6, 10**9))
    return [_PrintedLine(_words(template.loyalty) + [_Token(number, "LOYALTY_ID")], indent=template.margin)]


def _rules(template: _Template, place: str) -> list[_PrintedLine]:
    if place not in template.rules_at:
        return []
    return [_PrintedLine([_Token(template.rule, is_noise=True)], centred=True)]


_AIDS = ("A0000000031010", "A0000000041010", "A000000025010801", "A0000001524010")


def _receipt_values(
    rng: random.Random, template: _Template, printed_at: datetime, items: Sequence[PrintedItem]
) -> dict[str, str]:
    """What the family's blocks print besides the amounts: the dates, the store's numbers, the card's codes."""
    expiry = printed_at + timedelta(days=rng.choice((14, 30, 60, 90)))
    return {
        "date": printed_at.strftime(template.date_format).upper(),
        "long_date": f"{printed_at:%A}, {printed_at:%B} {printed_at.day}, {printed_at.year}",
        "time": printed_at.strftime(template.clock_format).upper(),
        "expiry": expiry.strftime(template.date_format).upper(),
        "store": f"{template.store_number:04d}",
        "till": str(rng.randint(1, 30)),
        "trans": str(rng.randint(1000, 99999)),
        "cashier": rng.choice(_CASHIERS),
        "order": str(rng.randint(10, 999)),
        "member": _digits(rng, rng.choice((9, 11, 12))),
        "auth": _digits(rng, 6),
        "aid": rng.choice(_AIDS),
        "tvr": rng.choice(("0000008000", "0080008000", "0000000000")),
        "ref": _digits(rng, rng.choice((4, 6, 12))),
        "survey": _digits(rng, rng.choice((12, 16))),
        "items_sold": str(sum(int(Decimal(item.quantity or "1")) for item in items)),
        "website": template.website,
        "hours": template.hours,
        "phone": " ".join(template.phone),
    }


def _compose(
    rng: random.Random, family: receipt_layouts.Family, merchant: str, template: _Template, printed_at: datetime
) -> tuple[list[_PrintedLine], PrintedFacts, frozenset[str]]:
    """The printed lines of one receipt, top to bottom, with 40 to 400 words, what they print, and the features of
    real receipts they show."""
    header = _header(rng, merchant, template)
    low, high = family.item_lines
    count = low + int((high - low) * rng.random() ** 1.8)  # most receipts are short
    while True:
        features: set[str] = set()
        items, printed_items, savings, deposits = _item_lines(rng, family, template, count, features)
        items_cents = sum(round(Decimal(item.line_total) * 100) for item in printed_items) + savings
        totals, amounts = _totals(rng, family, template, items_cents, deposits)
        paid_by, payment, paid = _payment(rng, template, round(Decimal(amounts["total"]) * 100))
        values = _receipt_values(rng, template, printed_at, printed_items) | paid
        values |= {"subtotal": amounts["subtotal"], "tax": amounts["tax"], "grand": amounts["total"]}
        top = _block_lines(rng, merchant, family, "header", values, template, features)
        if family.date_line and template.date_at_top:
            top.append(_date_line(template, printed_at))
        body = [*header, *top, *_rules(template, "header"), *items,
                *_block_lines(rng, merchant, family, "after_items", values, template, features),
                *_rules(template, "totals"), *totals,
                *_block_lines(rng, merchant, family, "after_total", values, template, features), *payment,
                *_block_lines(rng, merchant, family, "payment", values, template, features, paid_by),
                *_loyalty(rng, template)]  # fmt: skip
        if family.date_line and not template.date_at_top:
            body.append(_date_line(template, printed_at))
        if sum(line.word_count() for line in body) <= MAX_WORDS - 40 or count <= low:
            break
        count = max(low, count - 5)
    body.extend(_rules(template, "footer"))

    def footer_line(text: str, gap_before: float = 0.0) -> _PrintedLine:
        return _PrintedLine(_words(text), centred=template.footer_centred, indent=template.margin,
                            gap_before=gap_before)  # fmt: skip

    body.extend(footer_line(text, gap_before=1.0 if i == 0 else 0.0) for i, text in enumerate(template.footer))
    footer_features: set[str] = set()
    footer = _block_lines(rng, merchant, family, "footer", values, template, footer_features)
    if sum(line.word_count() for line in body + footer) <= MAX_WORDS - 5:
        body.extend(footer)
        features |= footer_features
    spare = iter(template.spare_footer)
    while sum(line.word_count() for line in body) < MIN_WORDS and (text := next(spare, None)):
        body.append(footer_line(text))
    _add_specks(rng, body, budget=MAX_WORDS - sum(line.word_count() for line in body))
    clock = "%H:%M:%S" if "%S" in template.clock_format else "%H:%M"
    facts = PrintedFacts(
        date=printed_at.date().isoformat(),
        time=printed_at.strftime(clock),
        items=tuple(printed_items),
        **amounts,  # type: ignore[arg-type]
    )
    labels = Counter(token.label for line in body for token in line.left + line.right + [t for _, t in line.tabbed])
    if labels["GRAND_TOTAL"] > 1:
        features.add("total restatements")
    features |= {feature for label, feature in (("WEBSITE", "websites"), ("STORE_HOURS", "store hours"),
                                                 ("LOYALTY_ID", "member numbers")) if labels[label]}  # fmt: skip
    return body, facts, frozenset(features)


def _add_specks(rng: random.Random, lines: list[_PrintedLine], budget: int) -> None:
    # dust and print artefacts the OCR reads as one-character words
    for line in lines:
        if budget > 0 and rng.random() < 0.04:
            line.left.insert(rng.randint(0, len(line.left)), _Token(rng.choice(_SPECKS), is_noise=True))
            budget -= 1


# ========================================================================================== layout


@dataclass(frozen=True, slots=True)
class _PlacedToken:
    token: _Token
    x0: float  # pixels from the left of the text block
    x1: float
    y_top: float  # pixels from the top of the text block, growing downwards
    y_bottom: float


def _place(
    rng: random.Random, lines: list[_PrintedLine], char_width: float, template: _Template
) -> tuple[list[list[_PlacedToken]], float, float]:
    """Pixel boxes on the merchant's printer grid; also the block's width and height in pixels."""
    block_width = template.columns * char_width
    placed: list[list[_PlacedToken]] = []
    y = 0.0
    for line in lines:
        cw = char_width * line.scale
        glyph_height = cw * 1.45
        y += cw * line.gap_before * 2.1
        y_top, y_bottom = y, y + glyph_height
        left_columns = sum(len(t.text) + 1 for t in line.left) - 1
        x = (block_width - left_columns * cw) / 2 if line.centred else line.indent * cw
        boxes = []
        for token in line.left:
            boxes.append(_jittered(rng, token, x, x + len(token.text) * cw, y_top, y_bottom, cw))
            x += (len(token.text) + 1) * cw
        for column, token in line.tabbed:
            x = max(column * cw, x)  # at its column, or after the text if the text reaches past it
            boxes.append(_jittered(rng, token, x, x + len(token.text) * cw, y_top, y_bottom, cw))
            x += (len(token.text) + 1) * cw
        if line.right:
            right_columns = sum(len(t.text) + 1 for t in line.right) - 1
            # flush right, or after the text if it is long
            x = max(template.amount_end * cw - right_columns * cw, x + cw)
            for token in line.right:
                boxes.append(_jittered(rng, token, x, x + len(token.text) * cw, y_top, y_bottom, cw))
                x += (len(token.text) + 1) * cw
        block_width = max(block_width, x - cw)  # a line too long for the grid widens the receipt
        placed.append(boxes)
        y = y_bottom + cw * template.line_spacing * rng.uniform(0.92, 1.08)
    return placed, block_width, y


def _jittered(
    rng: random.Random, token: _Token, x0: float, x1: float, top: float, bottom: float, cw: float
) -> _PlacedToken:
    # OCR boxes are never exactly on the printer grid
    wobble = cw * 0.08
    return _PlacedToken(
        token,
        x0 + rng.uniform(-wobble, wobble),
        x1 + rng.uniform(-wobble, wobble),
        top + rng.uniform(-wobble, wobble),
        bottom + rng.uniform(-wobble, wobble),
    )


@dataclass(frozen=True, slots=True)
class _Frame:
    """Turns pixel positions in the text block into normalised, y-up receipt coordinates."""

    block_width: float
    block_height: float
    width: float  # of the receipt crop, pixels
    height: float
    cos: float
    sin: float
    cut_right: float = 0.0  # pixels of the block's right side the crop cuts off (the price column of a photo)

    @classmethod
    def around(
        cls, block_width: float, block_height: float, angle: float, pad_x: float, pad_y: float, cut_right: float = 0.0
    ) -> _Frame:
        cos, sin = math.cos(angle), math.sin(angle)
        half_w, half_h = block_width / 2, block_height / 2
        # the crop holds the whole turned block plus a margin, less what it cuts off on the right
        width = 2 * (half_w * cos + half_h * abs(sin) + pad_x) - cut_right
        height = 2 * (half_w * abs(sin) + half_h * cos + pad_y)
        return cls(block_width, block_height, width, height, cos, sin, cut_right)

    def point(self, x: float, y_down: float) -> Point:
        dx, dy = x - self.block_width / 2, self.block_height / 2 - y_down  # centred, y up
        turned_x = dx * self.cos - dy * self.sin + self.cut_right / 2
        turned_y = dx * self.sin + dy * self.cos
        x_unit, y_unit = turned_x / self.width + 0.5, turned_y / self.height + 0.5
        if self.cut_right:  # the OCR's boxes reach past the crop's edge, as the users' photos' do
            return round(x_unit, 12), _unit(y_unit)
        return _unit(x_unit), _unit(y_unit)

    def corners(self, x0: float, x1: float, top: float, bottom: float) -> Corners:
        return self.point(x0, top), self.point(x1, top), self.point(x0, bottom), self.point(x1, bottom)


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


# =========================================================================================== noise


def _split_and_merge(rng: random.Random, lines: list[_PrintedLine], rate: float) -> bool:
    """The OCR splits a long word in two and reads two words as one; here only unlabelled words of letters, whose
    text no fact depends on. Whether it changed any."""
    changed = False
    for line in lines:
        kept: list[_Token] = []
        for token in line.left:
            plain = token.label is None and not token.is_noise and token.text.isalpha()
            if plain and len(token.text) >= 6 and rng.random() < rate:
                cut = rng.randint(2, len(token.text) - 2)
                kept += [
                    dataclasses.replace(token, text=token.text[:cut]),
                    dataclasses.replace(token, text=token.text[cut:]),
                ]
                changed = True
            elif plain and kept and kept[-1].label is None and kept[-1].text.isalpha() and rng.random() < rate:
                kept[-1] = dataclasses.replace(kept[-1], text=kept[-1].text + token.text)
                changed = True
            else:
                kept.append(token)
        line.left[:] = kept
    return changed


def _misspelt(rng: random.Random, text: str) -> str | None:
    """A letter dropped or two swapped, as OCR misreads a word; None where that leaves it as it was."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    if len(letters) < 4:
        return None
    i = rng.choice(letters[1:-1])
    if rng.random() < 0.5:
        return text[:i] + text[i + 1 :]
    swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return swapped if swapped != text else None


def _ocr_noise(rng: random.Random, token: _Token) -> str | None:
    """The token as a noisy OCR reads it, or None where no confusion applies."""
    text = token.text
    if not token.is_amount and token.label not in ("QUANTITY", "DATE", "TIME") and rng.random() < 0.3:
        misspelt = _misspelt(rng, text)
        if misspelt:
            return misspelt
    confusable = [i for i, c in enumerate(text) if c in _CONFUSABLE_CHARACTERS]
    droppable = [] if token.is_amount else [i for i, c in enumerate(text) if c in _DROPPABLE_PUNCTUATION]
    if len(text) <= 1:
        droppable = []
    # amounts keep their decimal point: OCR rarely loses it, and tests read the amounts back
    if confusable and (not droppable or rng.random() < 0.6):
        i = rng.choice(confusable)
        return text[:i] + _CONFUSABLE_CHARACTERS[text[i]] + text[i + 1 :]
    if droppable:
        i = rng.choice(droppable)
        return text[:i] + text[i + 1 :]
    return None


# ========================================================================================== labels


@dataclass(frozen=True, slots=True)
class _LabelPolicy:
    """How a receipt's words got their labels."""

    validated: bool  # False: nobody validated this receipt, so it has no VALID label
    proposed: bool  # False: nobody labelled it at all
    noise: float = 0.0  # the share of VALID labels that are wrong: the users' labellers err too


def _right_label_status(rng: random.Random, validated: bool) -> str:
    if not validated:
        return _weighted(rng, (("PENDING", 0.5), ("NONE", 0.3), ("NEEDS_REVIEW", 0.2)))
    return _weighted(
        rng, (("VALID", 0.86), ("PENDING", 0.05), ("NEEDS_REVIEW", 0.04), ("NONE", 0.03), ("INVALID", 0.02))
    )


def _word_labels(
    rng: random.Random, text: str, truth: str | None, policy: _LabelPolicy, labelled_at: datetime
) -> tuple[SyntheticLabel, ...]:
    if truth is None or not policy.proposed:
        return ()
    if truth == "MERCHANT_NAME" and policy.validated:
        # Whoever validates a receipt confirms whose it is. The merchant split groups receipts by their VALID
        # MERCHANT_NAME words, so a name word left unvalidated would make a merchant of its own; and every
        # validated receipt has a VALID label.
        status = "VALID"
    elif rng.random() < 0.03:  # some words the labellers missed
        return ()
    else:
        status = _right_label_status(rng, policy.validated)
    given = truth
    # drawn apart, so that the labels of a table with no noise stay what they were
    slipped = (
        bool(policy.noise) and random.Random(f"label-noise:{text}:{labelled_at.isoformat()}").random() < policy.noise
    )
    if status == "VALID" and slipped and truth in _CONFUSABLE_LABELS and truth != "MERCHANT_NAME":
        given = rng.choice(_CONFUSABLE_LABELS[truth])
    labels = [_label(rng, text, given, status, truth, labelled_at)]
    if rng.random() < 0.08 and truth in _CONFUSABLE_LABELS:
        wrong = rng.choice(_CONFUSABLE_LABELS[truth])
        wrong_status = (
            "INVALID" if policy.validated and rng.random() < 0.85 else rng.choice(("NEEDS_REVIEW", "PENDING"))
        )
        labels.append(_label(rng, text, wrong, wrong_status, truth, labelled_at))
    return tuple(labels)


def _label(rng: random.Random, text: str, label: str, status: str, truth: str, labelled_at: datetime) -> SyntheticLabel:
    added = labelled_at + timedelta(seconds=rng.randint(0, 3 * 86400))
    if status == "VALID":
        reasoning = f"'{text}' reads as the {label.lower().replace('_', ' ')} of this receipt"
    elif status == "INVALID":
        reasoning = f"'{text}' is a {truth.lower().replace('_', ' ')}, not a {label.lower().replace('_', ' ')}"
    else:
        reasoning = None
    consolidated = _LEGACY_LABELS.get(label) if rng.random() < 0.05 else None
    return SyntheticLabel(
        label=label,
        validation_status=status,
        timestamp_added=_timestamp(added),
        label_proposed_by=rng.choice(_PROPOSERS),
        reasoning=reasoning,
        label_consolidated_from=consolidated,
    )


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in one of the forms the users' table holds: with an offset or without, often with microseconds.
    The form and the microseconds follow from the moment itself, so no random draw is spent on them."""
    seconds = int(moment.timestamp())
    precise = moment.replace(microsecond=seconds * 7919 % 1_000_000)
    style = seconds % 3
    if style == 0:
        return moment.isoformat()
    if style == 1:
        return precise.isoformat()
    return precise.replace(tzinfo=None).isoformat()  # UTC, as the users' writer stores naive times


# ======================================================================================== receipts


def _receipt_rng(seed: int, index: int) -> random.Random:
    # a string seed is hashed with SHA-512, so it is stable across processes and Python versions
    return random.Random(f"synthetic-receipt:{seed}:{index}")


def _image_ids(seed: int) -> Iterator[tuple[str, int, int]]:
    """(image id, receipt id, receipts in the image) for receipts in order: most images hold one receipt,
    some two."""
    rng = random.Random(f"synthetic-images:{seed}")
    image = 0
    while True:
        image_id = str(uuid.uuid5(IMAGE_NAMESPACE, f"{seed}:{image}"))
        count = 2 if rng.random() < 0.1 else 1
        for receipt_id in range(1, count + 1):
            yield image_id, receipt_id, count
        image += 1


def iter_synthetic_receipts(
    receipts: int, seed: int, *, unlabelled_share: float = DEFAULT_UNLABELLED_SHARE, label_noise: float = 0.0
) -> Iterator[SyntheticReceipt]:
    """``receipts`` synthetic receipts, one at a time; the same ``(receipts, seed)`` gives the same ones.

    ``unlabelled_share`` of them (drawn per receipt) carry no VALID label: half have no label items,
    half only unvalidated ones (PENDING, NONE, NEEDS_REVIEW). Receipt ``n`` depends only on
    ``(seed, n)``, so a longer run starts with the receipts of a shorter one.
    """
    for name, share in (("unlabelled_share", unlabelled_share), ("label_noise", label_noise)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in 0..1, got {share}")
    for index, (image_id, receipt_id, count) in zip(range(receipts), _image_ids(seed), strict=False):
        yield _receipt(_receipt_rng(seed, index), index, image_id, receipt_id, count, unlabelled_share, label_noise)


def _receipt(
    rng: random.Random,
    index: int,
    image_id: str,
    receipt_id: int,
    receipts_in_image: int,
    unlabelled_share: float,
    label_noise: float = 0.0,
) -> SyntheticReceipt:
    family = _weighted(rng, [(family, family.share) for family in _FAMILIES])
    merchant = rng.choice(family.merchants)
    template = _template(merchant)
    added = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 600 * 86400))
    printed_at = added - timedelta(minutes=rng.randint(5, 3 * 24 * 60))
    unvalidated = rng.random() < unlabelled_share
    policy = _LabelPolicy(validated=not unvalidated, proposed=not unvalidated or rng.random() < 0.5, noise=label_noise)

    printed, facts, features = _compose(rng, family, merchant, template, printed_at)
    if _split_and_merge(rng, printed, rate=rng.uniform(0.0, 0.03)):
        features |= {"split and merged words"}
    char_width = rng.uniform(10.0, 16.0)  # the photo's resolution
    placed, block_width, block_height = _place(rng, printed, char_width, template)
    angle_degrees = round(max(-MAX_SKEW_DEGREES, min(MAX_SKEW_DEGREES, rng.gauss(0.0, 0.7))), 4)
    pad_x = char_width * rng.uniform(1.0, 3.0)
    cut = pad_x + char_width * rng.uniform(0.3, 1.2) if rng.random() < CUT_CROP_SHARE else 0.0
    frame = _Frame.around(
        block_width, block_height, math.radians(angle_degrees),
        pad_x=pad_x, pad_y=char_width * rng.uniform(1.5, 4.0), cut_right=cut,
    )  # fmt: skip
    if cut:
        features |= {"boxes over the crop's edge"}
    noise_rate = rng.uniform(0.01, 0.08)
    labelled_at = added + timedelta(minutes=rng.randint(1, 600))

    lines = []
    for line_id, boxes in enumerate(placed, start=1):
        words = tuple(
            _word(rng, word_id, box, frame, noise_rate, policy, labelled_at)
            for word_id, box in enumerate(boxes, start=1)
        )
        line_box = (min(b.x0 for b in boxes), max(b.x1 for b in boxes),
                    min(b.y_top for b in boxes), max(b.y_bottom for b in boxes))  # fmt: skip
        confidence = round(sum(w.confidence for w in words) / len(words), 2)
        lines.append(SyntheticLine(line_id, words, frame.corners(*line_box), confidence))
    return SyntheticReceipt(
        index=index,
        image_id=image_id,
        receipt_id=receipt_id,
        width=round(frame.width),
        height=round(frame.height),
        angle_degrees=angle_degrees,
        timestamp_added=_timestamp(added),
        merchant=merchant,
        lines=tuple(lines),
        receipts_in_image=receipts_in_image,
        facts=facts,
        family=family.name,
        features=features,
    )


def _word(
    rng: random.Random,
    word_id: int,
    box: _PlacedToken,
    frame: _Frame,
    noise_rate: float,
    policy: _LabelPolicy,
    labelled_at: datetime,
) -> SyntheticWord:
    token = box.token
    # The merchant's name is in large print, which the OCR reads cleanly; the merchant split reads it too.
    spared = token.is_noise or token.label == "MERCHANT_NAME"
    noisy = None if spared or rng.random() >= noise_rate else _ocr_noise(rng, token)
    if token.is_noise:
        confidence = rng.uniform(0.15, 0.6)
    elif noisy is not None:
        confidence = rng.uniform(0.3, 0.8)
    else:
        confidence = rng.uniform(0.86, 1.0)
    text = noisy or token.text
    if token.is_noise:
        embedding_status = "NOISE"
    else:
        embedding_status = _weighted(rng, (("SUCCESS", 0.9), ("PENDING", 0.05), ("NONE", 0.04), ("FAILED", 0.01)))
    return SyntheticWord(
        word_id=word_id,
        text=text,
        printed_text=token.text,
        truth=token.label,
        corners=frame.corners(box.x0, box.x1, box.y_top, box.y_bottom),
        confidence=max(0.01, round(confidence, 2)),
        is_noise=token.is_noise,
        embedding_status=embedding_status,
        labels=_word_labels(rng, text, token.label, policy, labelled_at),
        item=token.item,
    )


# =========================================================================================== items


def _receipt_item(receipt: SyntheticReceipt, raw_bucket: str) -> dict[str, Any]:
    # where the receipt sits in its photo (image coordinates, y down): a little inset, turned like its text
    inset = 0.04 + (receipt.index % 5) * 0.01
    tilt = math.radians(receipt.angle_degrees) * 0.5
    corners = (
        (inset, inset - tilt),
        (1 - inset, inset + tilt),
        (inset + tilt, 1 - inset),
        (1 - inset + tilt, 1 - inset),
    )
    return dynamo_items.receipt_item(
        receipt.image_id,
        receipt.receipt_id,
        width=receipt.width,
        height=receipt.height,
        timestamp_added=receipt.timestamp_added,
        raw_s3_bucket=raw_bucket,
        raw_s3_key=f"raw/{receipt.image_id}.png",
        corners=tuple((_unit(x), _unit(y)) for x, y in corners),
        sha256=hashlib.sha256(f"{receipt.image_id}:{receipt.receipt_id}".encode()).hexdigest(),
    )


def _image_items(receipt: SyntheticReceipt, raw_bucket: str) -> Iterator[dict[str, Any]]:
    """What the users' table also keeps in an image's partition: the image, and a sample of the photo's own
    OCR (lines, words, letters): enough for the reader to meet every item type, not one per character."""
    if receipt.receipt_id == 1:
        yield dynamo_items.image_item(
            receipt.image_id,
            width=receipt.width + 200,
            height=receipt.height + 300,
            timestamp_added=receipt.timestamp_added,
            raw_s3_bucket=raw_bucket,
            raw_s3_key=f"raw/{receipt.image_id}.png",
            receipt_count=receipt.receipts_in_image,
            sha256=hashlib.sha256(receipt.image_id.encode()).hexdigest(),
        )
    for line in receipt.lines[:2]:
        line_id = (receipt.receipt_id - 1) * 1000 + line.line_id  # the photo's lines, numbered across receipts
        yield dynamo_items.image_line_item(
            receipt.image_id,
            line_id,
            text=line.text,
            corners=line.corners,
            angle_degrees=receipt.angle_degrees,
            confidence=line.confidence,
        )
        for word in line.words:
            yield dynamo_items.image_word_item(
                receipt.image_id,
                line_id,
                word.word_id,
                text=word.text,
                corners=word.corners,
                angle_degrees=receipt.angle_degrees,
                confidence=word.confidence,
            )
        first = line.words[0]
        yield from dynamo_items.letter_items(
            receipt.image_id,
            None,
            line_id,
            first.word_id,
            text=first.text,
            corners=first.corners,
            angle_degrees=receipt.angle_degrees,
        )


def _word_items(receipt: SyntheticReceipt, line: SyntheticLine, word: SyntheticWord) -> Iterator[dict[str, Any]]:
    ids = (receipt.image_id, receipt.receipt_id, line.line_id, word.word_id)
    yield dynamo_items.word_item(
        *ids,
        text=word.text,
        corners=word.corners,
        angle_degrees=receipt.angle_degrees,
        confidence=word.confidence,
        embedding_status=word.embedding_status,
        is_noise=word.is_noise,
    )
    for label in word.labels:
        yield dynamo_items.label_item(
            *ids,
            label.label,
            validation_status=label.validation_status,
            timestamp_added=label.timestamp_added,
            reasoning=label.reasoning,
            label_proposed_by=label.label_proposed_by,
            label_consolidated_from=label.label_consolidated_from,
        )
    if line.line_id == 1:  # the receipt's own letters, for its first line
        yield from dynamo_items.letter_items(
            *ids[:2],
            line.line_id,
            word.word_id,
            text=word.text,
            corners=word.corners,
            angle_degrees=receipt.angle_degrees,
        )


def _spatial_analysis(receipt: SyntheticReceipt) -> Iterator[dict[str, Any]]:
    # a label analysis of the receipt's first VALID label, relating it to the next one
    valid = [(line, word) for line in receipt.lines for word in line.words if word.valid_labels]
    if len(valid) < 2:
        return
    (line, word), (other_line, other) = valid[:2]
    (x, y), *_ = word.corners
    (to_x, to_y), *_ = other.corners
    yield dynamo_items.spatial_analysis_item(
        receipt.image_id,
        receipt.receipt_id,
        line.line_id,
        word.word_id,
        from_label=word.valid_labels[0],
        from_position=(round(x, 6), round(y, 6)),
        relationships=[
            {
                "to_label": other.valid_labels[0],
                "to_line_id": Decimal(other_line.line_id),
                "to_word_id": Decimal(other.word_id),
                "distance": Decimal(f"{math.hypot(to_x - x, to_y - y):.6f}"),
                "angle": Decimal(f"{math.atan2(to_y - y, to_x - x):.6f}"),
            }
        ],
        timestamp_added=receipt.timestamp_added,
    )


def receipt_items(receipt: SyntheticReceipt, *, raw_bucket: str = RAW_BUCKET) -> Iterator[dict[str, Any]]:
    """The table items of one receipt, shaped as the users' writer shapes them (see :mod:`dynamo_items`): the
    receipt, each line with its words and their labels, and the items that share the partition unread."""
    yield from _image_items(receipt, raw_bucket)
    yield _receipt_item(receipt, raw_bucket)
    for line in receipt.lines:
        yield dynamo_items.line_item(
            receipt.image_id,
            receipt.receipt_id,
            line.line_id,
            text=line.text,
            corners=line.corners,
            angle_degrees=receipt.angle_degrees,
            confidence=line.confidence,
            embedding_status="NOISE" if all(word.is_noise for word in line.words) else "SUCCESS",
            is_noise=all(word.is_noise for word in line.words),
        )
        for word in line.words:
            yield from _word_items(receipt, line, word)
    yield from _spatial_analysis(receipt)


def iter_receipt_items(
    receipts: int,
    seed: int,
    *,
    unlabelled_share: float = DEFAULT_UNLABELLED_SHARE,
    label_noise: float = 0.0,
    raw_bucket: str = RAW_BUCKET,
) -> Iterator[dict[str, Any]]:
    """DynamoDB items (plain values, ``Decimal`` numbers) of ``receipts`` synthetic receipts."""
    for receipt in iter_synthetic_receipts(receipts, seed, unlabelled_share=unlabelled_share, label_noise=label_noise):
        yield from receipt_items(receipt, raw_bucket=raw_bucket)


# ==================================================================================== ground truth


@dataclass(frozen=True)
class ExpectedTruth:
    """What a reader that keeps VALID labels only should reconstruct from the seeded table."""

    receipts: int
    labelled_receipts: int  # receipts with at least one VALID label; the others are ignored
    words_in_labelled_receipts: int  # every word of those receipts, noise words included
    noise_words_in_labelled_receipts: int
    words_with_valid_label: int
    valid_label_counts: Counter[str]  # VALID label items per label
    items: int  # every item of every receipt, the unread types in its partition included


def expected_truth(
    receipts: int, seed: int, *, unlabelled_share: float = DEFAULT_UNLABELLED_SHARE, label_noise: float = 0.0
) -> ExpectedTruth:
    labelled = words = noise = words_with_valid = items = 0
    counts: Counter[str] = Counter()
    for receipt in iter_synthetic_receipts(receipts, seed, unlabelled_share=unlabelled_share, label_noise=label_noise):
        receipt_words = list(receipt.words())
        items += sum(1 for _ in receipt_items(receipt))
        if not receipt.has_valid_label:
            continue
        labelled += 1
        words += len(receipt_words)
        noise += sum(word.is_noise for word in receipt_words)
        for word in receipt_words:
            valid = word.valid_labels
            words_with_valid += bool(valid)
            counts.update(valid)
    return ExpectedTruth(receipts, labelled, words, noise, words_with_valid, counts, items)


def expected_valid_label_counts(
    receipts: int, seed: int, *, unlabelled_share: float = DEFAULT_UNLABELLED_SHARE
) -> Counter[str]:
    """VALID label items per label in ``iter_receipt_items(receipts, seed)``."""
    return expected_truth(receipts, seed, unlabelled_share=unlabelled_share).valid_label_counts


# ========================================================================================= writing

BATCH_SIZE = 25  # BatchWriteItem's limit
_RETRYABLE_ERRORS = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable",
})  # fmt: skip


class WriteFailed(ExplainedError, RuntimeError):
    """Items that could not be written; the message names the table."""


@dataclass
class WriteStats:
    items: int = 0  # items the table accepted
    requests: int = 0  # BatchWriteItem calls this module made, its own retries included
    retried_items: int = 0  # items sent again after the table returned them unprocessed
    sdk_retries: int = 0  # requests botocore resent by itself (throttling, server errors)
    throttled_requests: int = 0  # calls that still failed on throttling after botocore's retries
    seconds: float = 0.0

    def add(self, other: WriteStats) -> None:
        self.items += other.items
        self.requests += other.requests
        self.retried_items += other.retried_items
        self.sdk_retries += other.sdk_retries
        self.throttled_requests += other.throttled_requests


def _put_requests(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    serializer = TypeSerializer()
    for item in items:
        yield {"PutRequest": {"Item": {name: serializer.serialize(value) for name, value in item.items()}}}


def _batches(requests: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for request in requests:
        batch.append(request)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class _Backoff:
    base: float
    cap: float

    def delay(self, attempt: int) -> float:
        # "full jitter": spreads the retries of concurrent writers instead of synchronising them
        return random.uniform(0.0, min(self.cap, self.base * 2**attempt))


def _write_batch(
    client, table_name: str, requests: list[dict[str, Any]], max_retries: int, backoff: _Backoff
) -> WriteStats:
    """Writes one batch, retrying what comes back unprocessed or throttled until none is left."""
    stats = WriteStats()
    pending = requests
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff.delay(attempt - 1))
        stats.requests += 1
        try:
            response = client.batch_write_item(RequestItems={table_name: pending})
        except ClientError as error:
            stats.sdk_retries += error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            code = error.response.get("Error", {}).get("Code", "")
            if code not in _RETRYABLE_ERRORS:
                raise WriteFailed(f"writing to table {table_name!r} failed: {error}") from error
            stats.throttled_requests += 1
            continue
        stats.sdk_retries += response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        unprocessed = response.get("UnprocessedItems", {}).get(table_name, [])
        stats.items += len(pending) - len(unprocessed)
        if not unprocessed:
            return stats
        if attempt < max_retries:
            stats.retried_items += len(unprocessed)
        pending = unprocessed
    raise WriteFailed(
        f"{len(pending)} items still unwritten to table {table_name!r} after {max_retries} retries"
        " (the table keeps returning them unprocessed or throttling)"
    )


def write_items(
    table_name: str,
    items: Iterable[dict[str, Any]],
    *,
    client=None,
    max_retries: int = 10,
    concurrency: int = 4,
    on_progress: Callable[[WriteStats], None] | None = None,
    backoff_base_seconds: float = 0.05,
    backoff_cap_seconds: float = 5.0,
) -> WriteStats:
    """Streams ``items`` into the table with ``BatchWriteItem``, 25 per request, until all are written.

    Unprocessed items are retried with exponential backoff and jitter, at most ``max_retries`` times
    per batch; then :class:`WriteFailed` is raised. At most ``2 * concurrency`` batches are in
    flight, so memory stays bounded whatever ``items`` yields. ``on_progress`` gets a snapshot of
    the stats after each batch, in the calling thread.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    # the items come from TypeSerializer: botocore re-validating every nested attribute costs ~12 ms a request
    client = client or aws.client("dynamodb", max_pool_connections=max(10, concurrency), parameter_validation=False)
    backoff = _Backoff(backoff_base_seconds, backoff_cap_seconds)
    stats = WriteStats()
    started = time.perf_counter()

    def finished(batch_stats: WriteStats) -> None:
        stats.add(batch_stats)
        stats.seconds = time.perf_counter() - started
        if on_progress:
            on_progress(dataclasses.replace(stats))

    batches = _batches(_put_requests(items), BATCH_SIZE)
    if concurrency == 1:
        for batch in batches:
            finished(_write_batch(client, table_name, batch, max_retries, backoff))
    else:
        _write_concurrently(client, table_name, batches, concurrency, max_retries, backoff, finished)
    stats.seconds = time.perf_counter() - started
    return stats


def _write_concurrently(
    client,
    table_name: str,
    batches: Iterator[list[dict[str, Any]]],
    concurrency: int,
    max_retries: int,
    backoff: _Backoff,
    finished: Callable[[WriteStats], None],
) -> None:
    in_flight: set[Future[WriteStats]] = set()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="batch-write") as pool:
        try:
            for batch in batches:
                if len(in_flight) >= 2 * concurrency:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(future.result())
                in_flight.add(pool.submit(_write_batch, client, table_name, batch, max_retries, backoff))
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def seed_synthetic(
    table_name: str,
    receipts: int,
    seed: int,
    *,
    unlabelled_share: float = DEFAULT_UNLABELLED_SHARE,
    label_noise: float = 0.0,
    client=None,
    concurrency: int = 4,
    max_retries: int = 10,
    on_progress: Callable[[WriteStats], None] | None = None,
) -> WriteStats:
    """Writes ``receipts`` synthetic receipts of ``seed`` into the table; see :func:`iter_receipt_items`."""
    items = iter_receipt_items(receipts, seed, unlabelled_share=unlabelled_share, label_noise=label_noise)
    return write_items(
        table_name, items, client=client, concurrency=concurrency, max_retries=max_retries, on_progress=on_progress
    )
