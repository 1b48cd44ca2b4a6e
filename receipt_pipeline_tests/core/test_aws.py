from receipt_pipeline.core import aws


def test_region_comes_from_aws_region_as_other_sdks_read_it(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert aws.client("dynamodb").meta.region_name == "eu-west-1"


def test_clients_retry_throttling_adaptively_with_a_bound_on_attempts():
    config = aws.client("dynamodb", max_attempts=4).meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 4}
