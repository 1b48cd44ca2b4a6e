"""DynamoDB faults: half of all requests throttled, a table or an index that does not exist, an empty table,
all against the emulator over HTTP with real boto3 clients (through the fault-injecting proxy where a fault
needs one).

Unprocessed items on writes are shown in core/test_synthetic.py:
test_write_items_writes_every_item_once_through_partial_writes_and_throttling and
test_write_items_gives_up_after_max_retries_naming_the_table.
"""

from __future__ import annotations

import uuid

import pytest

from receipt_pipeline.core import aws, word_table
from receipt_pipeline.core.dynamo_reader import ReadOptions, ReceiptReadError, label_snapshot, read_receipt_words
from receipt_pipeline.core.dynamo_schema import create_table_request
from receipt_pipeline.core.synthetic import expected_truth, seed_synthetic
from receipt_pipeline.defs import ingestion
from receipt_pipeline_tests.aws_faults import THROTTLE, FaultProxy
from receipt_pipeline_tests.core.test_dynamo_reader import _labelled_receipt
from receipt_pipeline_tests.defs.test_ingestion import _failure_message, _local_settings, _materialize
from receipt_pipeline_tests.dynamo_items import put_items

QUERY, SCAN = "DynamoDB_20120810.Query", "DynamoDB_20120810.Scan"
RECEIPTS, SEED = 6, 17


@pytest.mark.parametrize(("strategy", "target"), [("gsi3", QUERY), ("scan", SCAN)])
def test_half_of_all_requests_throttled_the_read_completes_with_the_same_word_table(
    receipts_table, monkeypatch, strategy, target
):
    seed_synthetic(receipts_table, RECEIPTS, SEED)
    options = ReadOptions(table=receipts_table, strategy=strategy, read_parallelism=4)
    calm = read_receipt_words(options)

    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle_half(QUERY, SCAN)
        throttled = read_receipt_words(options)

    # every call was throttled once and retried by botocore: exactly half the requests
    assert proxy.throttled[target] > 0 and proxy.requests[target] == 2 * proxy.throttled[target]
    assert proxy.injected[THROTTLE] == sum(proxy.throttled.values())
    assert throttled.requests == calm.requests, "a retried request is one request to the reader"
    assert word_table.content_hash(throttled.frame) == word_table.content_hash(calm.frame)
    assert throttled.frame.equals(calm.frame)
    assert throttled.receipts == calm.receipts == expected_truth(RECEIPTS, SEED).labelled_receipts
    assert throttled.snapshot == calm.snapshot and throttled.skipped_total == calm.skipped_total == 0


@pytest.mark.parametrize("strategy", ["gsi3", "scan"])
def test_a_table_that_does_not_exist_fails_the_read_naming_the_table_and_what_to_check(aws_emulator, strategy):
    missing = f"receipts-missing-{uuid.uuid4().hex[:8]}"

    with pytest.raises(ReceiptReadError) as raised:
        read_receipt_words(ReadOptions(table=missing, strategy=strategy))

    message = str(raised.value)
    assert f"table {missing!r} does not exist" in message
    assert "RECEIPTS_TABLE" in message and "ResourceNotFoundException" in message
    assert "endpoint http://" in message  # where it looked
    with pytest.raises(ReceiptReadError, match=f"table {missing!r} does not exist"):
        label_snapshot(missing)  # the receipts_table observation


def test_a_table_that_does_not_exist_fails_the_asset_with_that_message(tmp_path, aws_emulator):
    missing = f"receipts-missing-{uuid.uuid4().hex[:8]}"

    result = _materialize(_local_settings(tmp_path, missing), ingestion.raw_receipt_words, raise_on_error=False)

    assert not result.success
    assert f"table {missing!r} does not exist" in _failure_message(result)


@pytest.fixture
def table_without_gsi3(aws_emulator):
    name = f"receipts-nogsi3-{uuid.uuid4().hex[:8]}"
    request = create_table_request(name)
    request["GlobalSecondaryIndexes"] = [i for i in request["GlobalSecondaryIndexes"] if i["IndexName"] != "GSI3"]
    request["AttributeDefinitions"] = [
        a for a in request["AttributeDefinitions"] if not a["AttributeName"].startswith("GSI3")
    ]
    client = aws.client("dynamodb")
    client.create_table(**request)
    client.get_waiter("table_exists").wait(TableName=name)
    yield name
    client.delete_table(TableName=name)


def test_an_index_that_does_not_exist_fails_the_gsi3_read_naming_it_and_the_scan_still_reads(
    table_without_gsi3, receipts_table
):
    put_items(table_without_gsi3, _labelled_receipt())
    put_items(receipts_table, _labelled_receipt())

    with pytest.raises(ReceiptReadError) as raised:
        read_receipt_words(ReadOptions(table=table_without_gsi3, strategy="gsi3"))
    message = str(raised.value)
    assert f"table {table_without_gsi3!r} has no index 'GSI3'" in message
    assert "strategy 'scan'" in message
    with pytest.raises(ReceiptReadError, match="has no index 'GSI3'"):
        label_snapshot(table_without_gsi3)

    # the scan needs no index, and reads what the gsi3 strategy reads from a complete table
    scanned = read_receipt_words(ReadOptions(table=table_without_gsi3, strategy="scan"))
    complete = read_receipt_words(ReadOptions(table=receipts_table, strategy="gsi3"))
    assert scanned.frame.equals(complete.frame) and scanned.receipts == 1


@pytest.mark.parametrize("strategy", ["gsi3", "scan"])
def test_an_empty_table_fails_the_read_naming_the_table_and_its_snapshot_is_zero(receipts_table, strategy):
    with pytest.raises(ReceiptReadError, match=rf"table {receipts_table!r}: no receipt has a label with status VALID"):
        read_receipt_words(ReadOptions(table=receipts_table, strategy=strategy, read_parallelism=2))

    snapshot = label_snapshot(receipts_table)
    assert (snapshot.labels, snapshot.newest_timestamp, snapshot.per_label) == (0, "", {})
    assert snapshot.version == "VALID:0:"


def test_an_empty_table_fails_the_asset_instead_of_writing_an_empty_word_table(tmp_path, receipts_table):
    result = _materialize(_local_settings(tmp_path, receipts_table), ingestion.raw_receipt_words, raise_on_error=False)

    assert not result.success
    assert "no receipt has a label with status VALID" in _failure_message(result)
    assert not (tmp_path / "data" / "assets" / "raw_receipt_words.parquet").exists()
