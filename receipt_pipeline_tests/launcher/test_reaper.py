"""The reaper sensor of two deployments sharing one (emulated) AWS account: each ends only its own orphans."""

from __future__ import annotations

import contextlib
import uuid

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test, instance_for_test

from receipt_pipeline.core import aws
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs import gpu_instances
from receipt_pipeline.launcher import ec2, tags
from receipt_pipeline_tests.launcher.emulated_ec2 import DEEP_LEARNING_AMI, create_network


@contextlib.contextmanager
def _deployment_instance(name: str, subnet_id: str):
    launcher = {
        "module": "receipt_pipeline.launcher",
        "class": "EC2GpuRunLauncher",
        "config": {"deployment": name, "ami": DEEP_LEARNING_AMI, "subnet_id": subnet_id},
    }
    with instance_for_test(overrides={"run_launcher": launcher}) as instance:
        yield instance


def _tick(instance: dg.DagsterInstance):
    sensor = gpu_instances.build_reaper_sensor(DeploymentSettings.from_env({"RECEIPT_PIPELINE_DEPLOYMENT": "local"}))
    return sensor(dg.build_sensor_context(instance=instance))


def _state(client, instance_id: str) -> str:
    return ec2.instance_status(client, instance_id).state


def test_each_deployments_reaper_ends_only_its_own_orphans_and_a_refused_termination_does_not_stop_the_rest(
    aws_emulator,
):
    client = aws.client("ec2")
    network = create_network()
    spec = ec2.InstanceSpec(ami=DEEP_LEARNING_AMI, subnet_id=network.subnet_id)
    staging_name, prod_name = f"staging-{uuid.uuid4().hex[:6]}", f"prod-{uuid.uuid4().hex[:6]}"
    started = []

    def start(deployment: str, run_id: str, protected: bool = False) -> str:
        instance_tags = {tags.INSTANCE_RUN_ID: run_id, tags.INSTANCE_DEPLOYMENT: deployment}
        request = ec2.run_instances_request(spec, "g5.xlarge", ec2.ON_DEMAND, "", instance_tags)
        [instance] = client.run_instances(**request)["Instances"]
        started.append(instance["InstanceId"])
        if protected:  # termination protection: EC2 refuses TerminateInstances (the emulator honours it so)
            client.modify_instance_attribute(InstanceId=instance["InstanceId"], DisableApiTermination={"Value": True})
        return instance["InstanceId"]

    with (
        _deployment_instance(staging_name, network.subnet_id) as staging,
        _deployment_instance(prod_name, network.subnet_id) as prod,
    ):
        staging_run = create_run_for_test(staging, job_name="train", status=dg.DagsterRunStatus.STARTED)
        prod_run = create_run_for_test(prod, job_name="train", status=dg.DagsterRunStatus.STARTED)
        ended_prod_run = create_run_for_test(prod, job_name="train", status=dg.DagsterRunStatus.FAILURE)
        staging_live = start(staging_name, staging_run.run_id)
        staging_orphan = start(staging_name, "a-run-staging-never-had")
        staging_protected = start(staging_name, "another-run-staging-never-had", protected=True)
        # staging knows none of prod's runs: without the deployment tag it would end all of these
        prod_live = start(prod_name, prod_run.run_id)
        prod_orphan = start(prod_name, ended_prod_run.run_id)
        untagged = client.run_instances(
            **ec2.run_instances_request(spec, "g5.xlarge", ec2.ON_DEMAND, "", {tags.INSTANCE_RUN_ID: "x"})
        )["Instances"][0]["InstanceId"]
        started.append(untagged)
        try:
            with pytest.raises(gpu_instances.ReaperError) as refused:
                _tick(staging)
            message = str(refused.value)
            assert staging_protected in message and "OperationNotPermitted" in message
            assert "1 terminated" in message and "1 could not be terminated" in message
            assert _state(client, staging_orphan) == "terminated", "the refusal did not stop the rest of the tick"
            assert _state(client, staging_protected) == "running"
            assert {_state(client, i) for i in (staging_live, prod_live, prod_orphan, untagged)} == {"running"}

            skipped = _tick(prod)
            assert isinstance(skipped, dg.SkipReason)
            assert f"deployment {prod_name!r} live, 1 terminated" in skipped.skip_message
            assert _state(client, prod_orphan) == "terminated"
            assert {_state(client, i) for i in (staging_live, staging_protected, prod_live, untagged)} == {"running"}
        finally:
            client.modify_instance_attribute(InstanceId=staging_protected, DisableApiTermination={"Value": False})
            client.terminate_instances(InstanceIds=started)


def test_a_deployment_without_the_gpu_launcher_reaps_nothing(aws_emulator):
    with instance_for_test() as instance:
        result = _tick(instance)
    assert isinstance(result, dg.SkipReason) and "not EC2GpuRunLauncher" in result.skip_message


def test_the_launcher_refuses_a_config_without_a_deployment_name():
    from dagster._config import process_config

    from receipt_pipeline.launcher import EC2GpuRunLauncher

    processed = process_config(EC2GpuRunLauncher.config_type(), {"ami": DEEP_LEARNING_AMI})
    assert not processed.success and "deployment" in str(processed.errors)
    with pytest.raises(ValueError, match="deployment is empty"):
        EC2GpuRunLauncher(deployment=" ", ami=DEEP_LEARNING_AMI)
