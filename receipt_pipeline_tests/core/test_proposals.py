"""Label proposals written to the emulator's table: the users' shape, never over a label, nothing lost to throttling."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from boto3.dynamodb.types import TypeDeserializer

from receipt_pipeline.core import aws, dynamo_schema, proposals
from receipt_pipeline.core.dynamo_reader import ReadOptions, label_snapshot, read_receipt_words
from receipt_pipeline.core.proposals import Proposal, write_proposals
from receipt_pipeline_tests.aws_faults import FaultProxy
from receipt_pipeline_tests.core.test_inference import receipt_items
from receipt_pipeline_tests.dynamo_items import label_item, put_items

NEW, LABELLED = "aaaaaaaa-1111-4000-8000-000000000001", "bbbbbbbb-1111-4000-8000-000000000002"
PUT_ITEM = "DynamoDB_20120810.PutItem"
VERSION = "0123456789abcdef01234567"


def without_retries():
    """A client whose botocore retries are off (and with them adaptive mode's client-side rate limiting, which
    would make the test wait): what is left is this module's backoff."""
    from botocore.config import Config

    return aws.session().client("dynamodb", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


@pytest.fixture
def table(receipts_table) -> str:
    """A receipt nobody labelled, and one with a VALID label a person gave."""
    put_items(
        receipts_table,
        [*receipt_items(NEW), *receipt_items(LABELLED), label_item(LABELLED, 1, 4, 2, "GRAND_TOTAL", "VALID")],
    )
    return receipts_table


PROPOSED = [
    Proposal((NEW, 1, 1, 1), "MERCHANT_NAME", 0.97),
    Proposal((NEW, 1, 1, 2), "MERCHANT_NAME", 0.955),
    Proposal((NEW, 1, 4, 2), "GRAND_TOTAL", 0.91),
    Proposal((NEW, 1, 3, 1), "DATE", 0.93),
]


def _item(table: str, key: dynamo_schema.WordKey, label: str) -> dict | None:
    image_id, receipt_id, line_id, word_id = key
    found = aws.client("dynamodb").get_item(
        TableName=table,
        Key={
            "PK": {"S": dynamo_schema.image_pk(image_id)},
            "SK": {"S": dynamo_schema.label_sk(receipt_id, line_id, word_id, label)},
        },
    )
    deserialise = TypeDeserializer().deserialize
    return {name: deserialise(value) for name, value in found["Item"].items()} if "Item" in found else None


def test_proposals_land_in_the_users_shape_and_are_not_training_data(table):
    before = label_snapshot(table)
    result = write_proposals(table, PROPOSED, VERSION, parallelism=2)
    assert (result.proposed, result.written, result.already_labelled, result.failed) == (4, 4, 0, 0)

    item = _item(table, (NEW, 1, 1, 2), "MERCHANT_NAME")
    users = label_item(NEW, 1, 1, 2, "MERCHANT_NAME")  # a label as the users' writer shapes one
    assert set(item) == set(users) and "label" not in item, "the label is in the keys only"
    assert {name: item[name] for name in ("PK", "SK", "TYPE", "GSI1SK", "GSI2PK", "GSI2SK", "GSI4PK", "GSI4SK")} == {
        name: users[name] for name in ("PK", "SK", "TYPE", "GSI1SK", "GSI2PK", "GSI2SK", "GSI4PK", "GSI4SK")
    }
    assert item["SK"] == "RECEIPT#00001#LINE#00001#WORD#00002#LABEL#MERCHANT_NAME"
    assert item["GSI1PK"] == "LABEL#MERCHANT_NAME".ljust(40, "_") and len(item["GSI1PK"]) == 40
    assert item["GSI3PK"] == "VALIDATION_STATUS#PENDING"
    assert item["GSI3SK"] == f"IMAGE#{NEW}#RECEIPT#00001#LINE#00001#WORD#00002#LABEL#MERCHANT_NAME"
    assert item["GSI4PK"] == f"IMAGE#{NEW}#RECEIPT#00001"
    assert item["validation_status"] == "PENDING" and item["label_consolidated_from"] is None
    assert item["label_proposed_by"] == f"receipt_pipeline:{VERSION}"
    assert "0.955" in item["reasoning"] and VERSION in item["reasoning"]
    assert dt.datetime.fromisoformat(item["timestamp_added"]).tzinfo is not None
    assert dynamo_schema.parse_label(item).label == "MERCHANT_NAME"

    # the training read (default statuses: VALID only) sees exactly what it saw before
    words = read_receipt_words(ReadOptions(table=table)).frame
    assert set(words["image_id"]) == {LABELLED}, "a receipt with proposals only is still unlabelled"
    assert words["label"].dropna().tolist() == ["GRAND_TOTAL"]
    assert label_snapshot(table).version == before.version, "the VALID labels did not change"


def test_a_rerun_writes_nothing_and_a_persons_label_wins(table):
    person = label_item(NEW, 1, 4, 2, "GRAND_TOTAL", status="NEEDS_REVIEW", when="2026-01-02T00:00:00")
    put_items(table, [person])
    first = write_proposals(table, PROPOSED, VERSION)
    assert (first.written, first.already_labelled, first.failed) == (3, 1, 0)
    assert _item(table, (NEW, 1, 4, 2), "GRAND_TOTAL") == person, "the person's label is untouched"

    # someone validates a proposal meanwhile; the next run, of another model, neither re-statuses nor repeats it
    validated = {**_item(table, (NEW, 1, 1, 1), "MERCHANT_NAME"), "validation_status": "VALID"}
    validated["GSI3PK"] = "VALIDATION_STATUS#VALID"
    put_items(table, [validated])
    again = write_proposals(table, PROPOSED, "another-model-version")
    assert (again.written, again.already_labelled, again.failed) == (0, 4, 0)
    assert _item(table, (NEW, 1, 1, 1), "MERCHANT_NAME") == validated
    assert _item(table, (NEW, 1, 1, 2), "MERCHANT_NAME")["label_proposed_by"] == f"receipt_pipeline:{VERSION}"


def test_throttled_writes_lose_nothing(table, aws_emulator, monkeypatch):
    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle_half(PUT_ITEM)  # every call's first attempt: botocore's adaptive retries take it
        retried = write_proposals(table, PROPOSED[:1], VERSION)
    assert (retried.written, retried.failed) == (1, 0) and proxy.throttled[PUT_ITEM] == 1
    with FaultProxy(aws_emulator["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle(PUT_ITEM, times=3)  # past botocore's retries: this module's backoff takes it
        client = without_retries()
        backed_off = write_proposals(
            table, PROPOSED[1:], VERSION, client=client, parallelism=1, backoff_base_seconds=0.01
        )
    assert (backed_off.written, backed_off.failed, backed_off.backoff_retries) == (3, 0, 3)
    assert proxy.throttled[PUT_ITEM] == 3
    monkeypatch.undo()
    assert all(_item(table, p.key, p.label) for p in PROPOSED)


def test_a_proposal_that_cannot_be_written_is_counted_and_named(table, monkeypatch):
    missing = write_proposals("no-such-table", PROPOSED[:1], VERSION)
    assert missing.failed == 1 and "ResourceNotFoundException" in missing.failures[0]

    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle(PUT_ITEM, times=2)  # the first proposal's try and its one retry
        client = without_retries()
        result = write_proposals(
            table, PROPOSED[:2], VERSION, client=client, parallelism=1, backoff_attempts=1, backoff_base_seconds=0.01
        )
    assert (result.written, result.failed, result.backoff_retries) == (1, 1, 1)
    assert result.failures_by_reason == {"ProvisionedThroughputExceededException": 1}
    [failure] = result.failures
    assert failure.startswith(f"IMAGE#{NEW}|RECEIPT#00001#LINE#00001#WORD#00001#LABEL#MERCHANT_NAME: ")
    assert "ProvisionedThroughputExceededException" in failure and "after 1 more tries here" in failure
    monkeypatch.undo()
    assert _item(table, (NEW, 1, 1, 1), "MERCHANT_NAME") is None


def test_only_words_of_the_table_with_a_known_label_above_the_threshold_and_no_valid_label_are_proposed():
    words = pd.DataFrame(
        [
            ("dynamo", NEW, 1, 1, 1, "MERCHANT_NAME", 0.95, []),
            ("dynamo", NEW, 1, 1, 2, "MERCHANT_NAME", 0.85, []),
            ("dynamo", NEW, 1, 2, 1, "AMOUNT", 0.99, []),
            ("dynamo", NEW, 1, 2, 2, "TAX", 0.99, ["TAX"]),
            ("dynamo", NEW, 1, 3, 1, None, 0.99, []),
            ("sroie", "X51005", 1, 1, 1, "MERCHANT_NAME", 0.99, []),
        ],
        columns=["source", "image_id", "receipt_id", "line_id", "word_id", "label", "confidence", "existing_labels"],
    )
    chosen, left_out = proposals.choose(words, min_confidence=0.9)
    assert chosen == [Proposal((NEW, 1, 1, 1), "MERCHANT_NAME", 0.95)]
    assert left_out == {"below_min_confidence": 1, "not_in_vocabulary": 1, "word_has_valid_label": 1}
