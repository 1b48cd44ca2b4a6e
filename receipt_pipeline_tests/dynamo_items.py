"""Hand-built items in the users' table schema, for tests that need exact control over each item."""

from __future__ import annotations

from decimal import Decimal

from receipt_pipeline.core import aws
from receipt_pipeline.core import dynamo_schema as schema


def word_item(image: str, receipt: int, line: int, word: int, text: str | None, box: dict | None) -> dict:
    item = {
        "PK": schema.image_pk(image),
        "SK": schema.word_sk(receipt, line, word),
        "TYPE": schema.RECEIPT_WORD,
        "confidence": Decimal("0.98"),
    }
    if text is not None:
        item["text"] = text
    if box is not None:
        item["bounding_box"] = {k: v if isinstance(v, str) else Decimal(str(v)) for k, v in box.items()}
    return item


def box(x: float, y: float, width: float = 0.1, height: float = 0.02) -> dict:
    return {"x": x, "y": y, "width": width, "height": height}


def label_item(
    image: str,
    receipt: int,
    line: int,
    word: int,
    label: str,
    status: str = "VALID",
    when: str = "2026-01-01T00:00:00",
) -> dict:
    return {
        "PK": schema.image_pk(image),
        "SK": schema.label_sk(receipt, line, word, label),
        "TYPE": schema.RECEIPT_WORD_LABEL,
        "label": label,
        "validation_status": status,
        "timestamp_added": when,
        "GSI3PK": schema.validation_status_gsi3pk(status),
        "GSI3SK": f"{when}#{schema.label_sk(receipt, line, word, label)}",
        "GSI1PK": schema.label_gsi1pk(label),
        "GSI1SK": schema.label_sk(receipt, line, word, label),
    }


def receipt_item(image: str, receipt: int) -> dict:
    return {
        "PK": schema.image_pk(image),
        "SK": schema.receipt_sk(receipt),
        "TYPE": schema.RECEIPT,
        "width": 1000,
        "height": 3000,
        "timestamp_added": "2026-01-01T00:00:00",
    }


def put_items(table: str, items: list[dict]) -> None:
    with aws.resource("dynamodb").Table(table).batch_writer() as writer:
        for item in items:
            writer.put_item(Item=item)
