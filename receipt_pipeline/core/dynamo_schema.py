"""The users' DynamoDB single table: keys, item types, and the one place where y is flipped.

See ``../shared/docs/dynamo-schema.md``. Items are handled in the plain-Python form that boto3's
``TypeDeserializer`` (or a table resource) produces: strings, ``Decimal`` numbers, dicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

TABLE_KEY_SCHEMA = [
    {"AttributeName": "PK", "KeyType": "HASH"},
    {"AttributeName": "SK", "KeyType": "RANGE"},
]
# (index name, partition key, sort key or None); every index projects all attributes.
GLOBAL_SECONDARY_INDEXES = [
    ("GSI1", "GSI1PK", "GSI1SK"),
    ("GSI2", "GSI2PK", "GSI2SK"),
    ("GSI3", "GSI3PK", "GSI3SK"),
    ("GSI4", "GSI4PK", "GSI4SK"),
    ("GSITYPE", "TYPE", None),
]

RECEIPT = "RECEIPT"
RECEIPT_LINE = "RECEIPT_LINE"
RECEIPT_WORD = "RECEIPT_WORD"
RECEIPT_WORD_LABEL = "RECEIPT_WORD_LABEL"
# item types in the same partitions that this pipeline never reads
IMAGE = "IMAGE"
IMAGE_LINE = "LINE"
IMAGE_WORD = "WORD"
IMAGE_LETTER = "LETTER"
RECEIPT_LETTER = "RECEIPT_LETTER"
RECEIPT_WORD_LABEL_SPATIAL_ANALYSIS = "RECEIPT_WORD_LABEL_SPATIAL_ANALYSIS"

VALIDATION_STATUSES = ("NONE", "PENDING", "VALID", "INVALID", "NEEDS_REVIEW")

LABEL_VOCABULARY = (
    "MERCHANT_NAME", "STORE_HOURS", "PHONE_NUMBER", "WEBSITE", "LOYALTY_ID", "ADDRESS_LINE", "DATE",
    "TIME", "PAYMENT_METHOD", "COUPON", "DISCOUNT", "PRODUCT_NAME", "QUANTITY", "UNIT_PRICE",
    "LINE_TOTAL", "SUBTOTAL", "TAX", "TIP", "GRAND_TOTAL", "CHANGE", "CASH_BACK", "REFUND",
)  # fmt: skip

GSI1_LABEL_WIDTH = 40
TTL_ATTRIBUTE = "time_to_live"


def create_table_request(table_name: str) -> dict[str, Any]:
    """Keyword arguments for ``create_table`` that build the receipts table as production has it."""
    attributes = {"PK", "SK"}
    indexes = []
    for name, hash_key, range_key in GLOBAL_SECONDARY_INDEXES:
        key_schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        attributes.add(hash_key)
        if range_key:
            key_schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
            attributes.add(range_key)
        indexes.append({"IndexName": name, "KeySchema": key_schema, "Projection": {"ProjectionType": "ALL"}})
    return {
        "TableName": table_name,
        "KeySchema": TABLE_KEY_SCHEMA,
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
        "GlobalSecondaryIndexes": indexes,
        "BillingMode": "PAY_PER_REQUEST",
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }


# ---------------------------------------------------------------------------------------------- keys


def image_pk(image_id: str) -> str:
    return f"IMAGE#{image_id}"


def receipt_sk(receipt_id: int) -> str:
    return f"RECEIPT#{receipt_id:05d}"


def line_sk(receipt_id: int, line_id: int) -> str:
    return f"{receipt_sk(receipt_id)}#LINE#{line_id:05d}"


def word_sk(receipt_id: int, line_id: int, word_id: int) -> str:
    return f"{line_sk(receipt_id, line_id)}#WORD#{word_id:05d}"


def label_sk(receipt_id: int, line_id: int, word_id: int, label: str) -> str:
    return f"{word_sk(receipt_id, line_id, word_id)}#LABEL#{label}"


def receipt_gsi_key(image_id: str, receipt_id: int) -> str:
    """``IMAGE#<uuid>#RECEIPT#00001``: the receipt's partition in GSI4 (and the words' and lines' in GSI3)."""
    return f"{image_pk(image_id)}#{receipt_sk(receipt_id)}"


def validation_status_gsi3pk(status: str) -> str:
    return f"VALIDATION_STATUS#{status}"


def label_gsi1pk(label: str) -> str:
    return f"LABEL#{label}".ljust(GSI1_LABEL_WIDTH, "_")


_PK = re.compile(r"^IMAGE#(?P<image>[0-9a-fA-F-]{1,64})$")
_WORD_SK = re.compile(r"^RECEIPT#(?P<receipt>\d{5})#LINE#(?P<line>\d{5})#WORD#(?P<word>\d{5})$")
_LABEL_SK = re.compile(
    r"^RECEIPT#(?P<receipt>\d{5})#LINE#(?P<line>\d{5})#WORD#(?P<word>\d{5})#LABEL#(?P<label>[A-Z0-9_]+)$"
)
# a word label's GSI3SK: IMAGE#<uuid>#RECEIPT#00001#LINE#00001#WORD#00001#LABEL#<LABEL>
_LABEL_GSI3SK = re.compile(r"^IMAGE#[^#]+#RECEIPT#\d{5}#LINE#\d{5}#WORD#\d{5}#LABEL#(?P<label>[A-Z0-9_]+)$")
_RECEIPT_SK = re.compile(r"^RECEIPT#(?P<receipt>\d{5})$")
_WORD_SK_PREFIX = re.compile(r"^RECEIPT#(?P<receipt>\d{5})#LINE#(?P<line>\d{5})#WORD#(?P<word>\d{5})(?:#|$)")


WordKey = tuple[str, int, int, int]  # (image_id, receipt_id, line_id, word_id)
ReceiptKey = tuple[str, int]  # (image_id, receipt_id)


class BadItem(ValueError):
    """An item that cannot be used; ``reason`` is a short stable code counted in metadata."""

    def __init__(self, reason: str, key: str, detail: str = ""):
        self.reason = reason
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {reason}" + (f" ({detail})" if detail else ""))


def item_key(item: dict[str, Any]) -> str:
    return f"{item.get('PK', '?')}|{item.get('SK', '?')}"


def image_id_of(pk: str) -> str | None:
    match = _PK.match(pk or "")
    return match.group("image") if match else None


# ----------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Word:
    key: WordKey
    text: str
    # 0..1, y pointing DOWN (already flipped)
    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float
    clamped: bool = False  # its stored box overhung the receipt's crop and was clamped into it


@dataclass(frozen=True, slots=True)
class WordLabel:
    key: WordKey
    label: str
    validation_status: str
    timestamp_added: str


def _number(value: Any, name: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise BadItem("non_numeric_coordinate", key, f"{name}={value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise BadItem("non_numeric_coordinate", key, f"{name}={value!r}") from error
    if math.isnan(number) or math.isinf(number):
        raise BadItem("nan_coordinate", key, f"{name}={value!r}")
    return number


def flip_box(x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
    """A y-up box (origin bottom-left, ``y`` its bottom edge) as ``(x0, y0, x1, y1)`` with y down.

    The only place the y axis is flipped: the stored top edge ``y + height`` becomes ``1 - (y + height)``.
    """
    return x, 1.0 - (y + height), x + width, 1.0 - y


def parse_word(item: dict[str, Any]) -> Word:
    """A ``RECEIPT_WORD`` item as a :class:`Word`; raises :class:`BadItem` naming the problem.

    ``text`` and ``bounding_box`` are required; ``confidence`` may be absent (NaN in the word table, which
    SROIE words share) but, when present, must be a number in (0, 1] as the schema says. A box that overhangs
    the receipt (the crop of a photo cuts through a price column, so a word's box reaches past x = 1) is
    clamped into it and the word kept (``clamped``); a box is bad only when it cannot be a word of the receipt:
    non-finite numbers, a negative or zero size, or wholly outside the receipt by more than half its size.
    """
    key = item_key(item)
    image_id = image_id_of(item.get("PK", ""))
    match = _WORD_SK.match(item.get("SK", ""))
    if image_id is None or match is None:
        raise BadItem("malformed_key", key)
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise BadItem("wrong_type", key, f"text={text!r}, expected a string")
    if text is None or not text.strip():
        raise BadItem("missing_text", key)
    box = item.get("bounding_box")
    if box is None:
        raise BadItem("missing_box", key)
    if not isinstance(box, dict):
        raise BadItem("wrong_type", key, f"bounding_box={box!r}, expected a map")
    absent = [name for name in ("x", "y", "width", "height") if name not in box]
    if absent:
        raise BadItem("missing_box", key, f"bounding_box has no {', '.join(absent)}")
    x, y, w, h = (_number(box[name], name, key) for name in ("x", "y", "width", "height"))
    if w < 0 or h < 0:
        raise BadItem("negative_box_size", key, f"width={w}, height={h}")
    if w == 0 or h == 0:
        raise BadItem("zero_box_size", key, f"width={w}, height={h}")
    x0, y0, x1, y1 = flip_box(x, y, w, h)
    if _far_outside(x0, x1, w) or _far_outside(y0, y1, h):
        raise BadItem("coordinate_out_of_range", key, f"x={x}, y={y}, width={w}, height={h}: off the receipt")
    clamped = min(x0, y0) < 0.0 or max(x1, y1) > 1.0
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
    return Word(
        key=(image_id, int(match["receipt"]), int(match["line"]), int(match["word"])),
        text=text,
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        confidence=_confidence(item.get("confidence"), key),
        clamped=clamped,
    )


def _far_outside(low: float, high: float, size: float) -> bool:
    """Whether an extent lies wholly outside 0..1, farther from it than half its size."""
    return high < -size / 2 or low > 1.0 + size / 2


def _confidence(value: Any, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise BadItem("wrong_type", key, f"confidence={value!r}, expected a number")
    try:
        confidence = float(value)
    except ValueError as error:
        raise BadItem("wrong_type", key, f"confidence={value!r}, expected a number") from error
    if math.isnan(confidence):
        raise BadItem("nan_confidence", key, f"confidence={value!r}")
    if not 0.0 < confidence <= 1.0:
        raise BadItem("confidence_out_of_range", key, f"confidence={value!r}, expected 0 < c <= 1")
    return confidence


def parse_label(item: dict[str, Any]) -> WordLabel:
    """A ``RECEIPT_WORD_LABEL`` item as a :class:`WordLabel`; raises :class:`BadItem`.

    The label is the one the key names: the users' writer keeps it in the keys only (``SK``, ``GSI1PK``,
    ``GSI3SK``), never in an attribute, so an attribute called ``label`` is not read.
    Whether the label is known (:data:`LABEL_VOCABULARY`) is the reader's call, which knows the merges.
    """
    key = item_key(item)
    image_id = image_id_of(item.get("PK", ""))
    match = _LABEL_SK.match(item.get("SK", ""))
    if image_id is None or match is None:
        raise BadItem("malformed_key", key)
    status = item.get("validation_status")
    if status is None:
        raise BadItem("missing_validation_status", key)
    if not isinstance(status, str):
        raise BadItem("wrong_type", key, f"validation_status={status!r}, expected a string")
    if status not in VALIDATION_STATUSES:
        raise BadItem("unknown_validation_status", key, f"validation_status={status!r}")
    return WordLabel(
        key=(image_id, int(match["receipt"]), int(match["line"]), int(match["word"])),
        label=match["label"],
        validation_status=status,
        timestamp_added=str(item.get("timestamp_added") or ""),
    )


def label_in_keys(item: Mapping[str, Any]) -> str | None:
    """The label a word-label item names in its ``SK``, or in its ``GSI3SK`` where a query projected only
    that; None when neither key has the label's shape."""
    match = _LABEL_SK.match(str(item.get("SK", ""))) or _LABEL_GSI3SK.match(str(item.get("GSI3SK", "")))
    return match["label"] if match else None


def receipt_key_of(item: dict[str, Any]) -> ReceiptKey | None:
    """The receipt a receipt item is, read from its keys alone; None if they are malformed."""
    image_id = image_id_of(str(item.get("PK", "")))
    match = _RECEIPT_SK.match(str(item.get("SK", "")))
    if image_id is None or match is None:
        return None
    return image_id, int(match["receipt"])


def word_key_of(item: dict[str, Any]) -> WordKey | None:
    """The word a word or word-label item belongs to, read from its keys alone; None if they are malformed."""
    image_id = image_id_of(str(item.get("PK", "")))
    match = _WORD_SK_PREFIX.match(str(item.get("SK", "")))
    if image_id is None or match is None:
        return None
    return image_id, int(match["receipt"]), int(match["line"]), int(match["word"])
