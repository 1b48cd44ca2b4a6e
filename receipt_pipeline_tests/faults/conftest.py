"""The fault suite's GPU launcher: the real EC2GpuRunLauncher in a real Dagster instance, its EC2 calls going
to the emulator through a fault-injecting proxy, and runs that need no code server (a GPU run is launched
from its run record alone).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._daemon.monitoring.run_monitoring import monitor_canceling_run, monitor_started_run, monitor_starting_run
from dagster._serdes import serialize_value

from receipt_pipeline.core import aws
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs import gpu_instances
from receipt_pipeline.launcher import ec2, tags
from receipt_pipeline_tests.aws_faults import FaultProxy
from receipt_pipeline_tests.launcher.emulated_ec2 import DEEP_LEARNING_AMI, Network, create_network

REPO_ROOT = Path(__file__).resolve().parents[2]
# run monitoring's timeouts in these tests (prod: 1200 s to start, 300 s to cancel)
TIMEOUT_SECONDS = 1
SUITE_TAG = "receipt-pipeline-fault-suite"
JOB_ORIGIN = JobPythonOrigin(
    "train_evaluate_promote",
    RepositoryPythonOrigin(
        sys.executable, ModuleCodePointer("receipt_pipeline.definitions", "defs", working_directory=str(REPO_ROOT))
    ),
)


@pytest.fixture(scope="module")
def network(aws_emulator) -> Network:
    return create_network()


@pytest.fixture
def proxy(aws_emulator, monkeypatch) -> Iterator[FaultProxy]:
    """Every AWS call of the test (the launcher's, the sensor's, the test's own) goes through the proxy."""
    with FaultProxy() as started:
        monkeypatch.setenv("AWS_ENDPOINT_URL", started.url)
        yield started


@pytest.fixture
def suite_id() -> str:
    """The value of this test's SUITE_TAG on every instance it starts: how it finds them all again."""
    return uuid.uuid4().hex[:12]


def launcher_config(network: Network, suite_id: str, **overrides) -> dict:
    config = {
        "deployment": f"faults-{suite_id}",
        "ami": DEEP_LEARNING_AMI,
        "subnet_id": network.subnet_id,
        "security_group_ids": [network.security_group_id],
        "instance_profile": network.instance_profile,
        "max_spot_price": "0.90",
        "wheel_prefix": "s3://artifacts/wheels",
        "extra_tags": {"project": "receipt-pipeline", SUITE_TAG: suite_id},
        "worker_env": {"RECEIPT_PIPELINE_DEPLOYMENT": "prod", "RECEIPTS_TABLE": "receipts"},
        "secrets": {"DAGSTER_PG_PASSWORD": "ssm:/receipt-pipeline/dagster-pg-password"},
    }
    return {**config, **overrides}


@contextlib.contextmanager
def gpu_dagster_instance(network: Network, suite_id: str, **launcher_overrides) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run launcher is EC2GpuRunLauncher, with run monitoring's start and cancel
    timeouts at TIMEOUT_SECONDS; :func:`monitor` is one pass of the monitoring daemon over a run."""
    overrides = {
        "run_launcher": {
            "module": "receipt_pipeline.launcher",
            "class": "EC2GpuRunLauncher",
            "config": launcher_config(network, suite_id, **launcher_overrides),
        },
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": TIMEOUT_SECONDS,
            "cancel_timeout_seconds": TIMEOUT_SECONDS,
            "poll_interval_seconds": 1,
        },
    }
    with instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture
def dagster_instance(proxy, network, suite_id) -> Iterator[dg.DagsterInstance]:
    with gpu_dagster_instance(network, suite_id) as instance:
        yield instance


def create_gpu_run(instance: dg.DagsterInstance, run_tags: dict | None = None):
    """A run that asks for a GPU by tag, as a training run does."""
    return create_run_for_test(
        instance, job_name=JOB_ORIGIN.job_name, tags={tags.GPU: "true", **(run_tags or {})}, job_code_origin=JOB_ORIGIN
    )


def launch(instance: dg.DagsterInstance, run):
    """What the queue daemon does: ``DagsterInstance.launch_run`` (a failed launch fails the run, then raises)."""
    instance.launch_run(run.run_id, workspace=None)
    return instance.get_run_by_id(run.run_id)


def mark_started(instance: dg.DagsterInstance, run) -> None:
    """What the run worker reports once it runs on the instance."""
    instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name), run.run_id)


def monitor(instance: dg.DagsterInstance, run_id: str):
    """One pass of the run monitoring daemon over one run, once its timeouts have passed; the run after it."""
    record = instance.get_run_record_by_id(run_id)
    status = record.dagster_run.status
    if status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING):
        time.sleep(TIMEOUT_SECONDS)
    logger = logging.getLogger("run_monitoring")
    if status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED):
        monitor_starting_run(instance, record, logger)
    elif status == dg.DagsterRunStatus.STARTED:
        monitor_started_run(instance, None, record, logger)
    elif status == dg.DagsterRunStatus.CANCELING:
        monitor_canceling_run(instance, record, logger)
    return instance.get_run_by_id(run_id)


def reap(instance: dg.DagsterInstance) -> str:
    """One tick of the sensor terminate_gpu_instances_of_ended_runs; its skip message."""
    sensor = gpu_instances.build_reaper_sensor(DeploymentSettings.from_env({"RECEIPT_PIPELINE_DEPLOYMENT": "local"}))
    result = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def suite_instances(suite_id: str, states=ec2.LIVE_STATES) -> dict[str, str]:
    """Instance id -> state of every instance the test started, by a real DescribeInstances."""
    pages = (
        aws.client("ec2")
        .get_paginator("describe_instances")
        .paginate(
            Filters=[
                {"Name": f"tag:{SUITE_TAG}", "Values": [suite_id]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )
    )
    return {i["InstanceId"]: i["State"]["Name"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


def run_instances_of(run_id: str) -> dict[str, str]:
    """Instance id -> state of every instance tagged with the run, whether or not the run recorded it."""
    pages = (
        aws.client("ec2")
        .get_paginator("describe_instances")
        .paginate(Filters=[{"Name": f"tag:{tags.INSTANCE_RUN_ID}", "Values": [run_id]}])
    )
    return {i["InstanceId"]: i["State"]["Name"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


def event_texts(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event of a run, message and data, serialised: what the UI and the event log show."""
    return "\n".join(
        f"{event.message}\n{serialize_value(event.dagster_event) if event.dagster_event else ''}"
        for event in instance.all_logs(run_id)
    )
