"""The console script as users run it: `local-aws` in the foreground, `seed-synthetic` against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from receipt_pipeline.core import aws, local_aws
from receipt_pipeline.core.dynamo_reader import ReadOptions, read_receipt_words


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "receipt_pipeline.cli", *args]


def _wait_for_table(table: str, bucket: str | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tables = aws.client("dynamodb", max_attempts=1).list_tables()["TableNames"]
            buckets = {b["Name"] for b in aws.client("s3", max_attempts=1).list_buckets()["Buckets"]}
            # the table is created first, then the bucket: wait for both
            if table in tables and (bucket is None or bucket in buckets):
                return
        except Exception:  # the port is not open yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"local-aws did not create {table} and {bucket} within {timeout}s")


def test_local_aws_serves_the_table_and_bucket_until_terminated(monkeypatch, tmp_path):
    port = _free_port()
    env = {**os.environ, **local_aws.emulator_env("127.0.0.1", port), "RECEIPTS_TABLE": "cli-receipts"}
    env["RECEIPT_PIPELINE_BUCKET"] = "cli-bucket"
    for name, value in local_aws.emulator_env("127.0.0.1", port).items():
        monkeypatch.setenv(name, value)
    server = subprocess.Popen(_cli("local-aws", "--port", str(port)), env=env, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_table("cli-receipts", "cli-bucket")
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
        stdout, _ = server.communicate(timeout=60)
    assert server.returncode == 0
    assert f"http://127.0.0.1:{port}" in stdout


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_dev_serves_the_ui_with_the_local_code_location_and_stops_its_children(tmp_path):
    aws_port, ui_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        RECEIPT_PIPELINE_DATA_DIR=str(tmp_path / "data"),
        RECEIPT_PIPELINE_DEPLOYMENT="local",
    )
    dev = subprocess.Popen(
        _cli("dev", "--port", str(aws_port), "--ui-port", str(ui_port), "--receipts", "2"),
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        assets = None
        while time.monotonic() < deadline and assets is None:
            assert dev.poll() is None, "receipt-pipeline dev exited early"
            try:
                data = _graphql(ui_port, "{ assetNodes { assetKey { path } groupName } }")["data"]
                assets = {tuple(n["assetKey"]["path"]): n["groupName"] for n in data["assetNodes"]} or None
            except (OSError, KeyError, TypeError):
                time.sleep(1)
        assert assets is not None, "the UI never served the code location"
        assert assets[("raw_receipt_words",)] == "ingestion"
        assert assets[("sroie_receipts",)] == "ingestion"
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=60)
    for port in (aws_port, ui_port):
        deadline = time.monotonic() + 20  # a closed listener may take a moment to leave the port
        while _served(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _served(port), f"port {port} still served after dev stopped"


def _served(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _one_clear_line(done: subprocess.CompletedProcess, *named: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert all(name in line for name in named), line


def test_bad_arguments_to_the_emulator_and_the_seeder_end_in_one_line_naming_them(aws_emulator, receipts_table):
    env = {**os.environ}
    _one_clear_line(subprocess.run(_cli("seed-synthetic", "--receipts", "0"), env=env, capture_output=True, text=True),
                    "--receipts", "0")  # fmt: skip
    missing = subprocess.run(
        _cli("seed-synthetic", "--receipts", "2", "--table", "no-such-table"), env=env, capture_output=True, text=True
    )
    _one_clear_line(missing, "--table", "no-such-table", "does not exist")
    unset = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"}
    refused = subprocess.run(_cli("seed-synthetic", "--receipts", "2"), env=unset, capture_output=True, text=True)
    _one_clear_line(refused, "AWS_ENDPOINT_URL")
    port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])  # the test session's emulator holds it
    taken = subprocess.run(_cli("local-aws", "--port", str(port)), env=env, capture_output=True, text=True)
    _one_clear_line(taken, "--port", f"127.0.0.1:{port} is in use")
