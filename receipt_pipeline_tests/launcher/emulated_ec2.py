"""The emulator's EC2 side: a network to launch into, and AWS's own actions that no client can ask for.

A spot interruption is EC2's doing, not a client's, so the emulator (moto, in this process) is told to
end the instance the way EC2 does, with EC2's reason code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from receipt_pipeline.core import aws

EMULATOR_ACCOUNT = "123456789012"
# one of the Deep Learning AMIs the emulator lists
DEEP_LEARNING_AMI = "ami-dca37ea5"


@dataclass(frozen=True)
class Network:
    subnet_id: str
    zone: str
    security_group_id: str
    instance_profile: str


def create_network() -> Network:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]
    group = ec2.create_security_group(GroupName=f"gpu-runs-{uuid.uuid4().hex[:6]}", Description="GPU runs", VpcId=vpc)
    profile = f"gpu-runs-{uuid.uuid4().hex[:6]}"
    aws.client("iam").create_instance_profile(InstanceProfileName=profile)
    return Network(subnet["SubnetId"], subnet["AvailabilityZone"], group["GroupId"], profile)


def interrupt_spot_instance(instance_id: str, region: str = "us-east-1") -> None:
    """EC2 reclaims a spot instance: terminated, with the reason EC2 gives."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[EMULATOR_ACCOUNT][region].get_instance(instance_id)
    instance.terminate()
    instance.state_reason = StateReason(
        "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination"
    )
    instance._reason = "Service initiated"


def hold_pending(instance_id: str, region: str = "us-east-1") -> None:
    """The instance never gets past ``pending`` (EC2 cannot place it, or its host never boots): the
    emulator starts every instance at once, so it is put back where EC2 would leave it."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import InstanceState

    instance = ec2_backends[EMULATOR_ACCOUNT][region].get_instance(instance_id)
    instance._state = InstanceState("pending", 0)


def instance_ids_for_run(run_id: str) -> list[str]:
    ec2 = aws.client("ec2")
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:dagster-run-id", "Values": [run_id]}]
    )
    return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]
