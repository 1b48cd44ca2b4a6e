"""The console script as users run it: `local-aws` in the foreground, `seed-synthetic` against it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from receipt_pipeline.core import aws, local_aws
from receipt_pipeline.core.dynamo_reader import ReadOptions, read_receipt_words


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "receipt_pipeline.cli", *args]


def _wait_for_table(table: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if table in aws.client("dynamodb", max_attempts=1).list_tables()["TableNames"]:
                return
        except Exception:  # the port is not open yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"local-aws did not create {table} within {timeout}s")


def test_local_aws_serves_the_table_and_bucket_until_terminated(monkeypatch, tmp_path):
    port = _free_port()
    env = {**os.environ, **local_aws.emulator_env("127.0.0.1", port), "RECEIPTS_TABLE": "cli-receipts"}
    env["RECEIPT_PIPELINE_BUCKET"] = "cli-bucket"
    for name, value in local_aws.emulator_env("127.0.0.1", port).items():
        monkeypatch.setenv(name, value)
    server = subprocess.Popen(_cli("local-aws", "--port", str(port)), env=env, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_table("cli-receipts")
        table = aws.client("dynamodb").describe_table(TableName="cli-receipts")["Table"]
        assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} >= {"GSI3", "GSITYPE"}
        assert "cli-bucket" in {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}

        seeded = subprocess.run(
            _cli("seed-synthetic", "--receipts", "4", "--seed", "3"), env=env, capture_output=True, text=True
        )
        assert seeded.returncode == 0, seeded.stderr
        assert "for 4 receipts to cli-receipts" in seeded.stdout

        result = read_receipt_words(ReadOptions(table="cli-receipts"))
        assert 1 <= result.receipts <= 4
        assert len(result.frame) >= 40 * result.receipts
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, _ = server.communicate(timeout=20)
    assert server.returncode == 0
    assert f"http://127.0.0.1:{port}" in stdout
