"""The local AWS emulator (moto in server mode) and the resources the pipeline expects in it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from receipt_pipeline.core import aws
from receipt_pipeline.core.dynamo_schema import TTL_ATTRIBUTE, create_table_request
from receipt_pipeline.core.settings import set_variables, unset_variables, variable

# Credentials the emulator accepts; never real ones.
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "emulator",
    "AWS_SECRET_ACCESS_KEY": "emulator",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def emulator_env(host: str, port: int) -> dict[str, str]:
    return {**EMULATOR_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}


def start_emulator(port: int = 0, host: str = "127.0.0.1") -> ThreadedMotoServer:
    """Starts moto's HTTP server in a thread; ``port=0`` picks a free port (see ``get_host_and_port``)."""
    # one access-log line per request drowns everything else the process prints
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return server


@contextmanager
def running_emulator(port: int = 0, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """A running emulator with this process's AWS environment pointed at it, restored afterwards."""
    server = start_emulator(port, host)
    env = emulator_env(*server.get_host_and_port())
    saved = {name: variable(name) for name in env}
    set_variables(env)
    try:
        yield env
    finally:
        unset_variables([name for name, value in saved.items() if value is None])
        set_variables({name: value for name, value in saved.items() if value is not None})
        server.stop()


def create_receipts_table(table_name: str) -> None:
    """The receipts table as production has it: keys, indexes, streams, and TTL on ``time_to_live``."""
    dynamodb = aws.client("dynamodb")
    dynamodb.create_table(**create_table_request(table_name))
    dynamodb.get_waiter("table_exists").wait(TableName=table_name)
    dynamodb.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


def provision(table_name: str, bucket: str) -> None:
    """Creates the receipts table (real keys and indexes) and the artifacts bucket if they are missing."""
    if table_name not in aws.client("dynamodb").list_tables()["TableNames"]:
        create_receipts_table(table_name)
    s3 = aws.client("s3")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
