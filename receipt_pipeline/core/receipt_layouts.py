"""Layout families of the synthetic receipts: what each kind of US store prints, one TOML file per family.

A family file in ``receipt_pipeline/core/receipt_layouts/`` declares its merchants and products and the lines
its receipts print around the figures every receipt has (name, address, date, items, subtotal, tax, total,
payment, footer): the item line styles, per-item extras such as savings lines, and blocks of lines at a place
(``header``, ``after_items``, ``after_total``, ``payment``, ``footer``). Each merchant's printer (its column
width, alignment, wording, date format) is drawn from its name in :mod:`receipt_pipeline.core.synthetic`;
the family says what is printed, the printer how. A new kind of store is one new file.

A line is a template: words separated by spaces, ``|`` before the words printed flush right, a leading space to
indent the line under the item, ``>`` before a word to put it at the printer's next tab column. ``{field}``
fills a word with a value of the receipt or the item; :data:`FIELDS` lists them with the label the users give
the word (None: a word they leave unlabelled, such as an item number, a tax flag or a coupon's expiry date).
A word holding a labelled field takes that field's label, whatever text surrounds it (``{saving}-`` is a
DISCOUNT word printed ``3.00-``).
"""

from __future__ import annotations

import functools
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "ITEM_FIELDS",
    "PLACES",
    "Block",
    "Family",
    "ItemStyle",
    "LayoutError",
    "LineTemplate",
    "Word",
    "families",
    "load_family",
]

# field -> the label of the word it fills, as the users label receipts (see docs/synthetic.md)
FIELDS: Mapping[str, str | None] = {
    # an item's
    "name": "PRODUCT_NAME",  # one word per word of the product's name
    "qty": "QUANTITY",
    "weight": "QUANTITY",  # of a weighed item, in pounds: "1.23"
    "pounds": "QUANTITY",  # the "lb" after a weight: the users label "1.31 lb" a quantity
    "unit": "UNIT_PRICE",  # per piece, or per pound of a weighed item
    "total": "LINE_TOTAL",
    "mark": None,  # the printer's sign between quantity and unit price: "@", "x", "AT"
    "sku": None,  # item or UPC number
    "plu": None,  # produce look-up code
    "flag": None,  # tax flag: the family's taxable or exempt letter
    "saving": "DISCOUNT",  # an item's instant saving, printed as a positive amount
    "coupon": "COUPON",
    "deposit": "TAX",  # a bottle deposit or CRV charged with the item: the users label it a tax
    # the receipt's
    "subtotal": "SUBTOTAL",
    "tax": "TAX",
    "grand": "GRAND_TOTAL",  # the amount paid, wherever it is restated
    "change": "CHANGE",
    "tendered": None,
    "card": "PAYMENT_METHOD",
    "last4": "PAYMENT_METHOD",  # the masked card number
    "auth": None,
    "aid": None,
    "tvr": None,
    "ref": None,
    "member": "LOYALTY_ID",
    "date": "DATE",  # in the printer's date format
    "long_date": "DATE",  # "Thursday, September 4, 2025"
    "time": "TIME",
    "expiry": None,  # a coupon's or a return window's date: a date that is not the receipt's
    "store": None,
    "till": None,
    "trans": None,
    "cashier": None,
    "survey": None,
    "items_sold": None,
    "website": "WEBSITE",
    "hours": "STORE_HOURS",
    "phone": "PHONE_NUMBER",
    "order": None,
}
ITEM_FIELDS = frozenset(
    {"name", "qty", "weight", "pounds", "unit", "total", "mark", "sku", "plu", "flag", "saving", "coupon", "deposit"}
)
AMOUNT_FIELDS = frozenset(
    {"weight", "unit", "total", "saving", "coupon", "deposit", "subtotal", "tax", "grand", "change", "tendered"}
)
PLACES = ("header", "after_items", "after_total", "payment", "footer")
LAYOUTS_PACKAGE = "receipt_pipeline.core"
LAYOUTS_FOLDER = "receipt_layouts"


class LayoutError(ValueError):
    """A family file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Word:
    """One printed word of a template: a format string and the fields it holds."""

    text: str
    fields: tuple[str, ...]
    tab: bool = False  # at the printer's next tab column

    @property
    def label(self) -> str | None:
        return next((FIELDS[name] for name in self.fields if FIELDS[name]), None)

    @property
    def is_amount(self) -> bool:
        return any(name in AMOUNT_FIELDS for name in self.fields)

    @property
    def is_name(self) -> bool:
        return self.fields == ("name",)


@dataclass(frozen=True, slots=True)
class LineTemplate:
    left: tuple[Word, ...]
    right: tuple[Word, ...]  # flush right
    indented: bool  # under the item's first line

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for word in self.left + self.right for name in word.fields)


@dataclass(frozen=True, slots=True)
class ItemStyle:
    """How a merchant prints an item: ``lines`` for one piece, ``several`` (if given) for a quantity over one."""

    name: str
    weight: float
    lines: tuple[LineTemplate, ...]
    several: tuple[LineTemplate, ...]
    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Block:
    """Lines printed together at a place of the receipt, on ``share`` of the receipts (or, per item, of the items)."""

    place: str
    share: float
    lines: tuple[LineTemplate, ...]
    feature: str  # what the coverage table counts it as; "" for none
    when: str = ""  # "card" or "cash": printed only for that payment
    each: str = "receipt"  # whose draw ``share`` is: each receipt's, or each merchant's (its printer's settings)
    # an extra that charges a deposit ({deposit}): its price range, and the words of the products it follows (any
    # product where empty)
    price_cents: tuple[int, int] = (0, 0)
    after: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    share: float  # of the generated receipts
    merchants: tuple[str, ...]
    products: tuple[str, ...]
    weighed: tuple[str, ...]  # sold by the pound
    price_cents: tuple[int, int]
    pound_cents: tuple[int, int]  # price per pound of a weighed item
    item_lines: tuple[int, int]
    tips: bool
    date_line: bool  # the printer's own date and time line; False where a block prints them
    taxable_flag: str
    exempt_flag: str
    taxable_share: float  # of the products
    styles: tuple[ItemStyle, ...]
    weighed_lines: tuple[LineTemplate, ...]
    item_extras: tuple[Block, ...]
    blocks: tuple[Block, ...]

    @property
    def features(self) -> frozenset[str]:
        found = {feature for style in self.styles for feature in style.features}
        found |= {block.feature for block in self.item_extras + self.blocks if block.feature}
        return frozenset(found | ({"weighed items"} if self.weighed else set()))


def _words(text: str, where: str) -> tuple[Word, ...]:
    words = []
    for raw in text.split():
        tab = raw.startswith(">") and len(raw) > 1
        body = raw[1:] if tab else raw
        try:
            fields = tuple(name for _, name, _, _ in string.Formatter().parse(body) if name is not None)
        except ValueError as error:
            raise LayoutError(f"{where}: {raw!r} is not a template word ({error})") from None
        unknown = [name for name in fields if name not in FIELDS]
        if unknown:
            raise LayoutError(f"{where}: unknown field {{{unknown[0]}}} in {raw!r}; known: {', '.join(FIELDS)}")
        if "name" in fields and body != "{name}":
            raise LayoutError(f"{where}: {{name}} must be a word of its own, not {raw!r}")
        words.append(Word(body, fields, tab))
    return tuple(words)


def line_template(text: str, where: str) -> LineTemplate:
    left, _, right = text.partition("|")
    template = LineTemplate(_words(left, where), _words(right, where), indented=text.startswith(" "))
    if not template.left and not template.right:
        raise LayoutError(f"{where}: an empty line")
    return template


def _lines(value: Any, where: str, item_level: bool) -> tuple[LineTemplate, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(line, str) for line in value):
        raise LayoutError(f"{where}: lines must be a non-empty list of strings")
    templates = tuple(line_template(line, f"{where} line {n}") for n, line in enumerate(value, start=1))
    for n, template in enumerate(templates, start=1):
        stray = template.fields - ITEM_FIELDS if item_level else template.fields & ITEM_FIELDS
        if stray and item_level:
            raise LayoutError(f"{where} line {n}: receipt field {{{sorted(stray)[0]}}} in an item's lines")
        if stray:
            raise LayoutError(f"{where} line {n}: item field {{{sorted(stray)[0]}}} outside an item's lines")
    return templates


def _share(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise LayoutError(f"{where}: share must be a number in 0..1, got {value!r}")
    return float(value)


def _pair(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise LayoutError(f"{where}: expected [low, high] as two whole numbers, got {value!r}")
    if not 0 < value[0] <= value[1]:
        raise LayoutError(f"{where}: expected 0 < low <= high, got {value!r}")
    return value[0], value[1]


def _blocks(entries: Any, where: str, item_level: bool) -> tuple[Block, ...]:
    blocks = []
    for n, entry in enumerate(entries or [], start=1):
        here = f"{where} {n}"
        place = entry.get("place", "item" if item_level else None)
        if not item_level and place not in PLACES:
            raise LayoutError(f"{here}: place must be one of {', '.join(PLACES)}, got {place!r}")
        when = entry.get("when", "")
        if when not in ("", "card", "cash"):
            raise LayoutError(f"{here}: when must be 'card' or 'cash', got {when!r}")
        each = entry.get("each", "receipt")
        if each not in ("receipt", "merchant"):
            raise LayoutError(f"{here}: each must be 'receipt' or 'merchant', got {each!r}")
        share = _share(entry.get("share", 1.0), here)
        lines = _lines(entry.get("lines"), here, item_level)
        deposit = any("deposit" in line.fields for line in lines)
        prices = _pair(entry["price_cents"], f"{here} price_cents") if deposit else (0, 0)
        after = tuple(entry.get("after", ()))
        blocks.append(Block(place, share, lines, entry.get("feature", ""), when, each, prices, after))
    return tuple(blocks)


def load_family(path: Path | Any) -> Family:
    """A family from its TOML file; raises :class:`LayoutError` naming the file and the problem."""
    where = Path(str(path)).name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise LayoutError(f"{where}: not TOML ({error})") from None
    try:
        styles = tuple(
            ItemStyle(
                name=style["name"],
                weight=float(style.get("weight", 1.0)),
                lines=_lines(style["lines"], f"{where} item_style {style['name']!r}", item_level=True),
                several=_lines(style["several"], f"{where} item_style {style['name']!r} several", item_level=True)
                if "several" in style
                else (),
                features=tuple(style.get("features", ())),
            )
            for style in data["item_style"]
        )
        if not styles or any(style.weight <= 0 for style in styles):
            raise LayoutError(f"{where}: at least one item_style, each of positive weight")
        weighed = tuple(data.get("weighed", ()))
        family = Family(
            name=data["family"],
            share=_share(data["share"], f"{where} share"),
            merchants=tuple(data["merchants"]),
            products=tuple(data["products"]),
            weighed=weighed,
            price_cents=_pair(data["price_cents"], f"{where} price_cents"),
            pound_cents=_pair(data.get("pound_cents", [99, 999]), f"{where} pound_cents"),
            item_lines=_pair(data["item_lines"], f"{where} item_lines"),
            tips=bool(data.get("tips", False)),
            date_line=bool(data.get("date_line", True)),
            taxable_flag=str(data.get("taxable_flag", "")),
            exempt_flag=str(data.get("exempt_flag", "")),
            taxable_share=_share(data.get("taxable_share", 0.5), f"{where} taxable_share"),
            styles=styles,
            weighed_lines=_lines(data["weighed_lines"], f"{where} weighed_lines", item_level=True) if weighed else (),
            item_extras=_blocks(data.get("item_extra"), f"{where} item_extra", item_level=True),
            blocks=_blocks(data.get("block"), f"{where} block", item_level=False),
        )
    except KeyError as error:
        raise LayoutError(f"{where}: missing {error.args[0]!r}") from None
    if not family.merchants or not family.products or family.share <= 0:
        raise LayoutError(f"{where}: a family needs merchants, products and a positive share")
    return family


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family shipped with the package, in file-name order."""
    folder = resources.files(LAYOUTS_PACKAGE) / LAYOUTS_FOLDER
    found = tuple(load_family(entry) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                  if entry.name.endswith(".toml"))  # fmt: skip
    merchants = [merchant for family in found for merchant in family.merchants]
    if len(set(merchants)) != len(merchants):
        raise LayoutError(f"{LAYOUTS_FOLDER}: a merchant is named in two families")
    return found
