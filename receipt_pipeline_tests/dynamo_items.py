"""Hand-built items in the users' table schema, for tests that need exact control over each item.

Built by ``receipt_pipeline.core.dynamo_items``, so they have the shapes the users' writer gives them
(keys and index attributes, no ``label`` attribute, long decimals); a test that needs a malformed item
edits one of these afterwards.
"""

from __future__ import annotations

from decimal import Decimal

from receipt_pipeline.core import aws, dynamo_items


def box(x: float, y: float, width: float = 0.1, height: float = 0.02) -> dict:
    return {"x": x, "y": y, "width": width, "height": height}


def word_item(image: str, receipt: int, line: int, word: int, text: str | None, box: dict | None) -> dict:
    """A word; ``text`` or ``box`` None leaves that attribute out, a box value given as a string is stored so."""
    numbers = {k: v for k, v in (box or {}).items() if not isinstance(v, str)}
    upright = {"x": 0.1, "y": 0.1, "width": 0.1, "height": 0.02, **numbers}
    item = dynamo_items.word_item(
        image,
        receipt,
        line,
        word,
        text=text or "",
        corners=dynamo_items.box_corners(upright["x"], upright["y"], upright["width"], upright["height"]),
        confidence=0.98,
        embedding_status="SUCCESS",
    )
    if text is None:
        del item["text"]
    if box is None:
        del item["bounding_box"]
    elif len(numbers) < len(box):  # a value that is no number (e.g. "NaN") is kept as the string it is
        item["bounding_box"] = {k: v if isinstance(v, str) else Decimal(str(v)) for k, v in box.items()}
    return item


def label_item(
    image: str,
    receipt: int,
    line: int,
    word: int,
    label: str,
    status: str = "VALID",
    when: str = "2026-01-01T00:00:00",
) -> dict:
    return dynamo_items.label_item(
        image,
        receipt,
        line,
        word,
        label,
        validation_status=status,
        timestamp_added=when,
        reasoning=f"a test's {label}",
        label_proposed_by="receipt_pipeline_tests",
    )


def receipt_item(image: str, receipt: int) -> dict:
    return dynamo_items.receipt_item(
        image,
        receipt,
        width=1000,
        height=3000,
        timestamp_added="2026-01-01T00:00:00",
        raw_s3_bucket="raw-receipt-images",
        raw_s3_key=f"raw/{image}.png",
        corners=((0.05, 0.05), (0.95, 0.05), (0.05, 0.95), (0.95, 0.95)),
    )


def put_items(table: str, items: list[dict]) -> None:
    with aws.resource("dynamodb").Table(table).batch_writer() as writer:
        for item in items:
            writer.put_item(Item=item)
