"""Items of the users' table in the shapes their own writer gives them (``../shared/docs/dynamo-schema.md``).

The local emulator's table, the synthetic generator and the tests write through these, so everything
the pipeline reads has the production shapes: labels named in their keys only (no ``label``
attribute), every index attribute each item type carries (words and lines use GSI1 and GSI3 for
their own purposes, everything of a receipt but its letters is in GSI4), and numbers with the many
decimals the writer formats them to. Items are plain values with ``Decimal`` numbers, ready for
boto3's ``TypeSerializer`` or a table resource.

Geometry comes in as corners, normalised 0..1 with y pointing UP, as the users' OCR stores words and
lines; receipt corners are in image coordinates with y pointing DOWN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from receipt_pipeline.core import dynamo_schema as schema

Point = tuple[float, float]
Corners = tuple[Point, Point, Point, Point]  # top-left, top-right, bottom-left, bottom-right
CORNER_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right")

# decimal places the users' writer formats each kind of number to
COORDINATE_PLACES = 20  # word, line and letter boxes and corners: e.g. 0.25520833333333330000
ANGLE_PLACES = 18
RECEIPT_CORNER_PLACES = 18
CONFIDENCE_PLACES = 2


def long_decimal(value: float, places: int) -> Decimal:
    """``value`` with exactly ``places`` decimals, rounded half up from its shortest repr, as the writer does."""
    quantum = Decimal(1).scaleb(-places)
    return Decimal(f"{Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP):.{places}f}")


def box_corners(x: float, y: float, width: float, height: float) -> Corners:
    """The corners of an upright box given as the table stores it (``y`` its bottom edge, y up)."""
    return (x, y + height), (x + width, y + height), (x, y), (x + width, y)


def geometry(corners: Corners, angle_degrees: float = 0.0, confidence: float = 1.0) -> dict[str, Any]:
    """The geometry attributes of a word, line or letter: bounding box, corners, angle and confidence."""
    xs = [x for x, _ in corners]
    ys = [y for _, y in corners]
    x0, y0 = min(xs), min(ys)
    return {
        "bounding_box": {
            "x": long_decimal(x0, COORDINATE_PLACES),
            "y": long_decimal(y0, COORDINATE_PLACES),  # the bottom edge: y points up
            "width": long_decimal(max(xs) - x0, COORDINATE_PLACES),
            "height": long_decimal(max(ys) - y0, COORDINATE_PLACES),
        },
        **{
            name: {"x": long_decimal(x, COORDINATE_PLACES), "y": long_decimal(y, COORDINATE_PLACES)}
            for name, (x, y) in zip(CORNER_NAMES, corners, strict=True)
        },
        "angle_degrees": long_decimal(angle_degrees, ANGLE_PLACES),
        "angle_radians": long_decimal(math.radians(angle_degrees), ANGLE_PLACES),
        "confidence": long_decimal(confidence, CONFIDENCE_PLACES),
    }


def _receipt_text(
    text: str, corners: Corners, angle_degrees: float, confidence: float, embedding_status: str, is_noise: bool
) -> dict[str, Any]:
    """What a receipt's lines and words both hold beside their keys."""
    return {
        "text": text,
        **geometry(corners, angle_degrees, confidence),
        "embedding_status": embedding_status,
        "is_noise": is_noise,
    }


def _cdn_fields() -> dict[str, None]:
    return {"cdn_s3_bucket": None, "cdn_s3_key": None, "cdn_webp_s3_key": None, "cdn_avif_s3_key": None}


# ------------------------------------------------------------------------------- what the pipeline reads


def receipt_item(
    image_id: str,
    receipt_id: int,
    *,
    width: int,
    height: int,
    timestamp_added: str,
    raw_s3_bucket: str,
    raw_s3_key: str,
    corners: Corners,
    sha256: str | None = None,
) -> dict[str, Any]:
    """A ``RECEIPT``: its pixel size, where its image is, and its corners in the photo (y down)."""
    pk, sk = schema.image_pk(image_id), schema.receipt_sk(receipt_id)
    return {
        "PK": pk,
        "SK": sk,
        "GSI1PK": pk,
        "GSI1SK": sk,
        "GSI2PK": schema.RECEIPT,
        "GSI2SK": f"{pk}#{sk}",
        "GSI4PK": schema.receipt_gsi_key(image_id, receipt_id),
        "GSI4SK": "0_RECEIPT",
        "TYPE": schema.RECEIPT,
        "width": Decimal(int(width)),
        "height": Decimal(int(height)),
        "timestamp_added": timestamp_added,
        "raw_s3_bucket": raw_s3_bucket,
        "raw_s3_key": raw_s3_key,
        **{
            name: {"x": long_decimal(x, RECEIPT_CORNER_PLACES), "y": long_decimal(y, RECEIPT_CORNER_PLACES)}
            for name, (x, y) in zip(CORNER_NAMES, corners, strict=True)
        },
        "sha256": sha256,
        **_cdn_fields(),
    }


def line_item(
    image_id: str,
    receipt_id: int,
    line_id: int,
    *,
    text: str,
    corners: Corners,
    angle_degrees: float = 0.0,
    confidence: float = 1.0,
    embedding_status: str = "NONE",
    is_noise: bool = False,
) -> dict[str, Any]:
    """A ``RECEIPT_LINE``."""
    receipt = schema.receipt_gsi_key(image_id, receipt_id)
    return {
        "PK": schema.image_pk(image_id),
        "SK": schema.line_sk(receipt_id, line_id),
        "TYPE": schema.RECEIPT_LINE,
        "GSI1PK": f"EMBEDDING_STATUS#{embedding_status}",
        "GSI1SK": f"LINE#{receipt}#LINE#{line_id:05d}",
        "GSI3PK": receipt,
        "GSI3SK": "LINE",
        "GSI4PK": receipt,
        "GSI4SK": f"2_LINE#{line_id:05d}",
        **_receipt_text(text, corners, angle_degrees, confidence, embedding_status, is_noise),
    }


def word_item(
    image_id: str,
    receipt_id: int,
    line_id: int,
    word_id: int,
    *,
    text: str,
    corners: Corners,
    angle_degrees: float = 0.0,
    confidence: float = 1.0,
    embedding_status: str = "NONE",
    is_noise: bool = False,
    extracted_data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``RECEIPT_WORD``."""
    receipt = schema.receipt_gsi_key(image_id, receipt_id)
    word = f"{receipt}#LINE#{line_id:05d}#WORD#{word_id:05d}"
    return {
        "PK": schema.image_pk(image_id),
        "SK": schema.word_sk(receipt_id, line_id, word_id),
        "TYPE": schema.RECEIPT_WORD,
        "GSI1PK": f"EMBEDDING_STATUS#{embedding_status}",
        "GSI1SK": f"WORD#{word}",
        "GSI2PK": schema.RECEIPT,
        "GSI2SK": word,
        "GSI3PK": receipt,
        "GSI3SK": "WORD",
        "GSI4PK": receipt,
        "GSI4SK": f"3_WORD#{line_id:05d}#{word_id:05d}",
        **_receipt_text(text, corners, angle_degrees, confidence, embedding_status, is_noise),
        "extracted_data": dict(extracted_data) if extracted_data else None,
    }


def label_item(
    image_id: str,
    receipt_id: int,
    line_id: int,
    word_id: int,
    label: str,
    *,
    validation_status: str,
    timestamp_added: str,
    reasoning: str | None = None,
    label_proposed_by: str | None = None,
    label_consolidated_from: str | None = None,
) -> dict[str, Any]:
    """A ``RECEIPT_WORD_LABEL``: the label is in the keys (``SK``, ``GSI1PK``, ``GSI3SK``), not an attribute."""
    receipt = schema.receipt_gsi_key(image_id, receipt_id)
    word = f"{receipt}#LINE#{line_id:05d}#WORD#{word_id:05d}"
    return {
        "PK": schema.image_pk(image_id),
        "SK": schema.label_sk(receipt_id, line_id, word_id, label),
        "GSI1PK": schema.label_gsi1pk(label),
        "GSI1SK": word,
        "GSI2PK": schema.RECEIPT,
        "GSI2SK": word,
        "GSI3PK": schema.validation_status_gsi3pk(validation_status),
        "GSI3SK": f"{word}#LABEL#{label}",
        "GSI4PK": receipt,
        "GSI4SK": f"4_LABEL#{line_id:05d}#{word_id:05d}#{label}",
        "TYPE": schema.RECEIPT_WORD_LABEL,
        "reasoning": reasoning,
        "timestamp_added": timestamp_added,
        "validation_status": validation_status,
        "label_consolidated_from": label_consolidated_from,
        "label_proposed_by": label_proposed_by,
    }


# ------------------------------------------------------------------- what shares the partitions, unread


def image_item(
    image_id: str,
    *,
    width: int,
    height: int,
    timestamp_added: str,
    raw_s3_bucket: str,
    raw_s3_key: str,
    receipt_count: int,
    image_type: str = "PHOTO",
    sha256: str | None = None,
) -> dict[str, Any]:
    """The ``IMAGE`` a receipt was cropped from."""
    pk = schema.image_pk(image_id)
    return {
        "PK": pk,
        "SK": schema.IMAGE,
        "GSI1PK": pk,
        "GSI1SK": schema.IMAGE,
        "GSI2PK": pk,
        "GSI2SK": schema.IMAGE,
        "GSI3PK": f"IMAGE#{image_type}",
        "GSI3SK": f"NUM_RECEIPTS#{receipt_count:05d}",
        "TYPE": schema.IMAGE,
        "width": Decimal(int(width)),
        "height": Decimal(int(height)),
        "timestamp_added": timestamp_added,
        "raw_s3_bucket": raw_s3_bucket,
        "raw_s3_key": raw_s3_key,
        "sha256": sha256,
        **_cdn_fields(),
        "image_type": image_type,
        "receipt_count": Decimal(receipt_count),
    }


def image_line_item(
    image_id: str, line_id: int, *, text: str, corners: Corners, angle_degrees: float = 0.0, confidence: float = 1.0
) -> dict[str, Any]:
    """An image-level ``LINE`` (the OCR of the whole photo, before receipts were cropped)."""
    pk = schema.image_pk(image_id)
    return {
        "PK": pk,
        "SK": f"LINE#{line_id:05d}",
        "TYPE": schema.IMAGE_LINE,
        "GSI1PK": pk,
        "GSI1SK": f"LINE#{line_id:05d}",
        "text": text,
        **geometry(corners, angle_degrees, confidence),
    }


def image_word_item(
    image_id: str,
    line_id: int,
    word_id: int,
    *,
    text: str,
    corners: Corners,
    angle_degrees: float = 0.0,
    confidence: float = 1.0,
) -> dict[str, Any]:
    """An image-level ``WORD``."""
    pk = schema.image_pk(image_id)
    sk = f"LINE#{line_id:05d}#WORD#{word_id:05d}"
    return {
        "PK": pk,
        "SK": sk,
        "TYPE": schema.IMAGE_WORD,
        "GSI2PK": pk,
        "GSI2SK": sk,
        "text": text,
        **geometry(corners, angle_degrees, confidence),
    }


def letter_items(
    image_id: str,
    receipt_id: int | None,
    line_id: int,
    word_id: int,
    *,
    text: str,
    corners: Corners,
    angle_degrees: float = 0.0,
    confidence: float = 1.0,
) -> list[dict[str, Any]]:
    """One letter item per character of a word, each with its share of the word's width: image-level
    ``LETTER``s when ``receipt_id`` is None, else ``RECEIPT_LETTER``s."""
    (left, top), _, _, (right, bottom) = corners
    share = (right - left) / max(1, len(text))
    items = []
    for letter_id, character in enumerate(text, start=1):
        x0 = left + share * (letter_id - 1)
        box = ((x0, top), (x0 + share, top), (x0, bottom), (x0 + share, bottom))
        letter = f"LINE#{line_id:05d}#WORD#{word_id:05d}#LETTER#{letter_id:05d}"
        item_type = schema.IMAGE_LETTER if receipt_id is None else schema.RECEIPT_LETTER
        sk = letter if receipt_id is None else f"{schema.receipt_sk(receipt_id)}#{letter}"
        items.append(
            {
                "PK": schema.image_pk(image_id),
                "SK": sk,
                "TYPE": item_type,
                "text": character,
                **geometry(box, angle_degrees, confidence),
            }
        )
    return items


def spatial_analysis_item(
    image_id: str,
    receipt_id: int,
    line_id: int,
    word_id: int,
    *,
    from_label: str,
    from_position: Point,
    relationships: Sequence[Mapping[str, Any]],
    timestamp_added: str,
    analysis_version: str = "1.0",
) -> dict[str, Any]:
    """A label analysis whose ``SK`` extends its word's key (``...#WORD#00001#SPATIAL_ANALYSIS``)."""
    receipt = schema.receipt_gsi_key(image_id, receipt_id)
    return {
        "PK": schema.image_pk(image_id),
        "SK": f"{schema.word_sk(receipt_id, line_id, word_id)}#SPATIAL_ANALYSIS",
        "GSI1PK": f"SPATIAL_ANALYSIS#{from_label}",
        "GSI1SK": f"{receipt}#TIMESTAMP#{timestamp_added}",
        "GSI2PK": f"{receipt}#SPATIAL",
        "GSI2SK": f"LABEL#{from_label}#LINE#{line_id:05d}#WORD#{word_id:05d}",
        "TYPE": schema.RECEIPT_WORD_LABEL_SPATIAL_ANALYSIS,
        "from_label": from_label,
        "from_position": {"x": Decimal(str(from_position[0])), "y": Decimal(str(from_position[1]))},
        "spatial_relationships": [dict(relationship) for relationship in relationships],
        "relationships_count": Decimal(len(relationships)),
        "timestamp_added": timestamp_added,
        "analysis_version": analysis_version,
    }
