"""The fault-injecting proxy itself, driven by real boto3 clients against the emulator."""

from __future__ import annotations

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from receipt_pipeline.core import aws
from receipt_pipeline_tests.aws_faults import BATCH_WRITE_TARGET, PARTIAL_BATCH_WRITE, THROTTLE, FaultProxy

QUERY = "DynamoDB_20120810.Query"


@pytest.fixture
def faults(aws_emulator, monkeypatch) -> FaultProxy:
    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


def _put(table: str, count: int) -> list[dict]:
    serializer = TypeSerializer()
    return [
        {"PutRequest": {"Item": {k: serializer.serialize(v) for k, v in {"PK": "IMAGE#1", "SK": f"S#{i:03d}"}.items()}}}
        for i in range(count)
    ]


def _query_count(client, table: str) -> int:
    response = client.query(
        TableName=table, KeyConditionExpression="PK = :pk", ExpressionAttributeValues={":pk": {"S": "IMAGE#1"}}
    )
    return response["Count"]


def test_throttled_query_is_retried_by_botocore_and_then_succeeds(receipts_table, faults):
    client = aws.client("dynamodb")
    client.batch_write_item(RequestItems={receipts_table: _put(receipts_table, 3)})
    faults.throttle(QUERY, times=2)

    response = client.query(
        TableName=receipts_table,
        KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": "IMAGE#1"}},
    )

    assert response["Count"] == 3
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert faults.injected[THROTTLE] == 2
    assert faults.throttled[QUERY] == 2
    assert faults.requests[QUERY] == 3
    assert faults.pending_faults()[THROTTLE] == 0


def test_throttling_past_the_clients_attempts_surfaces_as_dynamodbs_own_error(receipts_table, faults):
    client = aws.client("dynamodb", max_attempts=2)
    faults.throttle(QUERY, times=5)

    with pytest.raises(ClientError) as raised:
        _query_count(client, receipts_table)

    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # aws.client's max_attempts counts every attempt, the first included
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert faults.injected[THROTTLE] == 2
    assert faults.pending_faults()[THROTTLE] == 3


def test_throttling_one_operation_leaves_the_others_alone(receipts_table, faults):
    client = aws.client("dynamodb")
    faults.throttle("DynamoDB_20120810.Scan", times=1)

    assert _query_count(client, receipts_table) == 0

    assert faults.injected[THROTTLE] == 0
    assert faults.pending_faults()[THROTTLE] == 1


def test_partial_batch_write_writes_the_first_items_and_returns_the_rest_unprocessed(receipts_table, faults):
    client = aws.client("dynamodb")
    faults.partial_batch_writes(times=1, keep=4)

    response = client.batch_write_item(RequestItems={receipts_table: _put(receipts_table, 10)})

    unprocessed = response["UnprocessedItems"][receipts_table]
    assert [w["PutRequest"]["Item"]["SK"]["S"] for w in unprocessed] == [f"S#{i:03d}" for i in range(4, 10)]
    assert _query_count(client, receipts_table) == 4
    assert faults.injected[PARTIAL_BATCH_WRITE] == 1
    assert faults.deferred_items == 6
    assert faults.requests[BATCH_WRITE_TARGET] == 1

    # the fault is used up: the unprocessed items go through on the next request
    response = client.batch_write_item(RequestItems={receipts_table: unprocessed})
    assert response["UnprocessedItems"] == {}
    assert _query_count(client, receipts_table) == 10


def test_partial_batch_write_keeping_nothing_writes_nothing(receipts_table, faults):
    client = aws.client("dynamodb")
    faults.partial_batch_writes(times=1, keep=0)

    response = client.batch_write_item(RequestItems={receipts_table: _put(receipts_table, 3)})

    assert len(response["UnprocessedItems"][receipts_table]) == 3
    assert _query_count(client, receipts_table) == 0
