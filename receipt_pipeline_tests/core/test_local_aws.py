from receipt_pipeline.core import aws, local_aws


def test_provision_creates_table_with_production_indexes_and_bucket(aws_emulator):
    local_aws.provision("receipts-provision", "bucket-provision")
    local_aws.provision("receipts-provision", "bucket-provision")  # idempotent

    table = aws.client("dynamodb").describe_table(TableName="receipts-provision")["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"PK": "HASH", "SK": "RANGE"}
    indexes = {index["IndexName"]: index for index in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"GSI1", "GSI2", "GSI3", "GSI4", "GSITYPE"}
    for number in range(1, 5):
        assert [k["AttributeName"] for k in indexes[f"GSI{number}"]["KeySchema"]] == [
            f"GSI{number}PK",
            f"GSI{number}SK",
        ]
    assert [k["AttributeName"] for k in indexes["GSITYPE"]["KeySchema"]] == ["TYPE"]
    assert all(index["Projection"]["ProjectionType"] == "ALL" for index in indexes.values())
    assert table["StreamSpecification"]["StreamEnabled"] is True
    ttl = aws.client("dynamodb").describe_time_to_live(TableName="receipts-provision")["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "time_to_live")
    buckets = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert "bucket-provision" in buckets
