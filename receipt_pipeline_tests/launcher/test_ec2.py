"""Starting, watching and ending GPU instances against the emulator's EC2 over HTTP."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from receipt_pipeline.core import aws
from receipt_pipeline.launcher import ec2
from receipt_pipeline_tests.aws_faults import CAPACITY_REFUSAL, FaultProxy
from receipt_pipeline_tests.launcher.emulated_ec2 import DEEP_LEARNING_AMI, create_network, interrupt_spot_instance

USER_DATA = "#!/bin/bash\necho run\n"


@pytest.fixture
def network(aws_emulator):
    return create_network()


@pytest.fixture
def spec(network) -> ec2.InstanceSpec:
    return ec2.InstanceSpec(
        ami=DEEP_LEARNING_AMI,
        max_spot_price="0.90",
        subnet_id=network.subnet_id,
        security_group_ids=(network.security_group_id,),
        instance_profile=network.instance_profile,
        root_volume_gb=150,
        extra_tags={"team": "receipts"},
    )


def _described(instance_id: str) -> dict:
    [reservation] = aws.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservation["Instances"][0]


def test_a_spot_instance_starts_with_its_user_data_imdsv2_an_encrypted_root_and_tags(spec, network):
    request = ec2.run_instances_request(spec, "g5.xlarge", ec2.SPOT, USER_DATA, {"dagster-run-id": "r1"})
    assert request["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "MaxPrice": "0.90",
        },
    }
    assert "KeyName" not in request  # no SSH key

    started = ec2.start_instance(aws.client("ec2"), spec, USER_DATA, {"dagster-run-id": "r1"})
    assert (started.instance_type, started.market, started.zone) == ("g5.xlarge", ec2.SPOT, network.zone)
    assert started.refusals == () and started.hourly_price is not None and started.hourly_price > 0

    client = aws.client("ec2")
    described = _described(started.instance_id)
    assert described["InstanceLifecycle"] == "spot"
    assert described["MetadataOptions"]["HttpTokens"] == "required"
    assert described["SubnetId"] == network.subnet_id
    assert [g["GroupId"] for g in described["SecurityGroups"]] == [network.security_group_id]
    assert described["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{network.instance_profile}")
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags == {"dagster-run-id": "r1", "team": "receipts"}
    user_data = client.describe_instance_attribute(InstanceId=started.instance_id, Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]).decode() == USER_DATA
    behaviour = client.describe_instance_attribute(
        InstanceId=started.instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    [volume] = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [started.instance_id]}])[
        "Volumes"
    ]
    assert (volume["Encrypted"], volume["Size"], volume["VolumeType"]) == (True, 150, "gp3")
    assert {t["Key"]: t["Value"] for t in volume["Tags"]} == tags


def test_refused_capacity_walks_the_type_list_then_falls_back_to_on_demand(spec, monkeypatch):
    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.refuse_capacity("g5.xlarge", "spot")
        proxy.refuse_capacity("g6.xlarge", "spot", code="SpotMaxPriceTooLow")
        started = ec2.start_instance(aws.client("ec2"), spec, USER_DATA, {})
        assert (started.instance_type, started.market) == ("g4dn.xlarge", ec2.SPOT)
        assert started.refusals == (
            "g5.xlarge spot: InsufficientInstanceCapacity",
            "g6.xlarge spot: SpotMaxPriceTooLow",
        )

        proxy.refuse_capacity("g4dn.xlarge", "spot")
        started = ec2.start_instance(aws.client("ec2"), spec, USER_DATA, {})
        assert (started.instance_type, started.market) == ("g5.xlarge", ec2.ON_DEMAND)
        assert _described(started.instance_id).get("InstanceLifecycle") is None
        assert started.hourly_price == spec.on_demand_prices["g5.xlarge"]

        for instance_type in spec.instance_types:
            proxy.refuse_capacity(instance_type, "on-demand")
        with pytest.raises(ec2.CapacityError) as refused:
            ec2.start_instance(aws.client("ec2"), spec, USER_DATA, {})
        assert str(refused.value).count("InsufficientInstanceCapacity") == 5
        assert proxy.injected[CAPACITY_REFUSAL] == 2 + 3 + 6


def test_a_runs_own_type_and_market_narrow_the_placements(spec):
    assert ec2.placements(spec) == [
        ("g5.xlarge", "spot"), ("g6.xlarge", "spot"), ("g4dn.xlarge", "spot"),
        ("g5.xlarge", "on-demand"), ("g6.xlarge", "on-demand"), ("g4dn.xlarge", "on-demand"),
    ]  # fmt: skip
    assert ec2.placements(spec, instance_type="g6.xlarge") == [("g6.xlarge", "spot"), ("g6.xlarge", "on-demand")]
    assert ec2.placements(spec, market="on-demand") == [(t, "on-demand") for t in spec.instance_types]
    with pytest.raises(ValueError, match="market 'reserved'"):
        ec2.placements(spec, market="reserved")


def test_status_follows_the_instance_and_terminate_ends_it_once(spec):
    client = aws.client("ec2")
    started = ec2.start_instance(client, spec, USER_DATA, {})
    assert ec2.instance_status(client, started.instance_id).alive
    assert ec2.terminate_instance(client, started.instance_id) is True
    status = ec2.instance_status(client, started.instance_id)
    assert status.state == "terminated" and not status.alive and not status.spot_interrupted
    assert ec2.terminate_instance(client, started.instance_id) is False
    assert ec2.instance_status(client, "i-0123456789abcdef0").state == "missing"


def test_a_spot_interruption_is_told_apart_from_a_user_termination(spec):
    client = aws.client("ec2")
    started = ec2.start_instance(client, spec, USER_DATA, {})
    interrupt_spot_instance(started.instance_id)
    status = ec2.instance_status(client, started.instance_id)
    assert status.state == "terminated" and status.spot_interrupted
    assert "Spot instance termination" in status.reason


def test_live_instances_are_found_by_their_run_tag(spec):
    client = aws.client("ec2")
    first = ec2.start_instance(client, spec, USER_DATA, {"dagster-run-id": "run-a"})
    second = ec2.start_instance(client, spec, USER_DATA, {"dagster-run-id": "run-b"})
    ec2.start_instance(client, spec, USER_DATA, {"other": "x"})
    ec2.terminate_instance(client, second.instance_id)
    live = ec2.live_instances_by_tag(client, "dagster-run-id")
    assert live.get(first.instance_id) == "run-a" and second.instance_id not in live


def test_cost_is_the_hourly_price_for_the_billed_seconds():
    launched = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    assert ec2.billed_cost(1.2, launched, launched + dt.timedelta(minutes=30)) == pytest.approx(0.6)
    # per-second billing has a 60-second minimum
    assert ec2.billed_cost(3.6, launched, launched + dt.timedelta(seconds=10)) == pytest.approx(0.06)
    assert ec2.billed_cost(None, launched) is None
