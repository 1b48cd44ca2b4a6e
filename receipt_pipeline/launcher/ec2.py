"""Starting, watching and ending the EC2 instance of one run: plain boto3, no Dagster.

Capacity is taken in order of preference: each instance type as spot, then each as on-demand
(`placements`). A refusal for capacity or price moves to the next placement; any other error is raised,
since a wrong AMI or subnet would fail the same way on every type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from receipt_pipeline.core.errors import ExplainedError

SPOT = "spot"
ON_DEMAND = "on-demand"
MARKETS = (SPOT, ON_DEMAND)

# Error codes with which EC2 refuses capacity or price rather than the request itself: worth another placement.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InstanceLimitExceeded",
        "Unsupported",  # the type is not offered in the subnet's zone
    }
)
SPOT_INTERRUPTION_CODES = frozenset({"Server.SpotInstanceTermination"})
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# EC2 bills Linux instances per second with a 60-second minimum
MINIMUM_BILLED_SECONDS = 60


class CapacityError(ExplainedError, RuntimeError):
    """No placement in the fallback list could be started; the message lists each refusal."""


class LaunchError(ExplainedError, RuntimeError):
    """An instance was started but its launch could not be completed; the instance was terminated."""


@dataclass(frozen=True)
class InstanceSpec:
    """How the instances of GPU runs are started (the launcher's config)."""

    ami: str
    instance_types: Sequence[str] = ("g5.xlarge", "g6.xlarge", "g4dn.xlarge")
    market: str = SPOT
    max_spot_price: str | None = None  # USD an hour; None: up to the on-demand price, as EC2 does
    subnet_id: str | None = None
    security_group_ids: Sequence[str] = ()
    instance_profile: str | None = None  # a name or an ARN
    root_volume_gb: int = 200
    root_device_name: str = "/dev/sda1"  # the Deep Learning AMIs' root; Amazon Linux says /dev/xvda
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    # the Pricing API lives in us-east-1 only and is not worth a dependency: list prices, USD an hour
    on_demand_prices: Mapping[str, float] = field(
        default_factory=lambda: {"g4dn.xlarge": 0.526, "g5.xlarge": 1.006, "g6.xlarge": 0.8048}
    )

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ValueError(f"market {self.market!r}: expected one of {', '.join(MARKETS)}")
        if not self.instance_types:
            raise ValueError("instance_types is empty: name at least one GPU instance type")


@dataclass(frozen=True)
class StartedInstance:
    instance_id: str
    instance_type: str
    market: str
    zone: str
    hourly_price: float | None
    launch_time: dt.datetime
    refusals: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceStatus:
    state: str  # pending, running, ..., terminated; "missing" when EC2 no longer knows the id
    reason_code: str = ""
    reason: str = ""

    @property
    def spot_interrupted(self) -> bool:
        return self.reason_code in SPOT_INTERRUPTION_CODES

    @property
    def alive(self) -> bool:
        return self.state in ("pending", "running")


def placements(
    spec: InstanceSpec, instance_type: str | None = None, market: str | None = None
) -> list[tuple[str, str]]:
    """(instance type, market) in the order they are tried; a run's own type or market narrows the list."""
    types = [instance_type] if instance_type else list(spec.instance_types)
    market = market or spec.market
    if market not in MARKETS:
        raise ValueError(f"market {market!r}: expected one of {', '.join(MARKETS)}")
    order = [(t, SPOT) for t in types] if market == SPOT else []
    return order + [(t, ON_DEMAND) for t in types]


def run_instances_request(
    spec: InstanceSpec, instance_type: str, market: str, user_data: str, tags: Mapping[str, str]
) -> dict:
    all_tags = [{"Key": k, "Value": str(v)} for k, v in {**spec.extra_tags, **tags}.items()]
    request: dict = {
        "ImageId": spec.ami,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        # the user data powers the machine off when the run ends; terminate makes that the end of the bill
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [
            {
                "DeviceName": spec.root_device_name,
                "Ebs": {
                    "VolumeSize": spec.root_volume_gb,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": all_tags},
            {"ResourceType": "volume", "Tags": all_tags},
        ],
    }
    if market == SPOT:
        spot_options = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if spec.max_spot_price:
            spot_options["MaxPrice"] = str(spec.max_spot_price)
        request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot_options}
    if spec.subnet_id:
        request["SubnetId"] = spec.subnet_id
    if spec.security_group_ids:
        request["SecurityGroupIds"] = list(spec.security_group_ids)
    if spec.instance_profile:
        key = "Arn" if spec.instance_profile.startswith("arn:") else "Name"
        request["IamInstanceProfile"] = {key: spec.instance_profile}
    return request


def start_instance(
    ec2,
    spec: InstanceSpec,
    user_data: str,
    tags: Mapping[str, str],
    *,
    instance_type: str | None = None,
    market: str | None = None,
) -> StartedInstance:
    refusals: list[str] = []
    for candidate_type, candidate_market in placements(spec, instance_type, market):
        request = run_instances_request(spec, candidate_type, candidate_market, user_data, tags)
        try:
            [instance] = ec2.run_instances(**request)["Instances"]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in CAPACITY_ERRORS:
                raise
            refusals.append(f"{candidate_type} {candidate_market}: {code}")
            continue
        zone = instance.get("Placement", {}).get("AvailabilityZone", "")
        try:
            price = hourly_price(ec2, spec, candidate_type, candidate_market, zone)
        except Exception as error:
            raise end_after_failed_launch(ec2, instance["InstanceId"], "looking up its hourly price", error) from error
        return StartedInstance(
            instance_id=instance["InstanceId"],
            instance_type=candidate_type,
            market=candidate_market,
            zone=zone,
            hourly_price=price,
            launch_time=instance.get("LaunchTime") or dt.datetime.now(dt.UTC),
            refusals=tuple(refusals),
        )
    raise CapacityError("no GPU capacity: " + "; ".join(refusals))


def end_after_failed_launch(ec2, instance_id: str, step: str, error: BaseException) -> LaunchError:
    """Terminates an instance whose launch failed after RunInstances, so that no instance is left running
    without a run that knows it; the error says what failed and what became of the instance."""
    try:
        terminate_instance(ec2, instance_id)
        outcome = "the instance was terminated"
    except Exception as terminate_error:  # the same outage may refuse this too: the reaper sensor is the backstop
        outcome = (
            f"terminating it failed too ({terminate_error}); the sensor terminate_gpu_instances_of_ended_runs "
            "ends it once its run has failed"
        )
    return LaunchError(f"EC2 instance {instance_id} was started but {step} failed: {error}; {outcome}")


def hourly_price(ec2, spec: InstanceSpec, instance_type: str, market: str, zone: str) -> float | None:
    """USD an hour: the zone's current spot price, or the on-demand list price."""
    if market == SPOT and zone:
        history = ec2.describe_spot_price_history(
            InstanceTypes=[instance_type],
            AvailabilityZone=zone,
            ProductDescriptions=["Linux/UNIX"],
            StartTime=dt.datetime.now(dt.UTC),
        ).get("SpotPriceHistory", [])
        if history:
            newest = max(history, key=lambda row: row.get("Timestamp") or dt.datetime.min.replace(tzinfo=dt.UTC))
            return float(newest["SpotPrice"])
    return spec.on_demand_prices.get(instance_type)


def instance_status(ec2, instance_id: str) -> InstanceStatus:
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
            return InstanceStatus("missing", reason=f"EC2 does not know {instance_id}")
        raise
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        return InstanceStatus("missing", reason=f"EC2 does not know {instance_id}")
    instance = instances[0]
    reason = instance.get("StateReason") or {}
    return InstanceStatus(
        state=instance["State"]["Name"],
        reason_code=reason.get("Code", ""),
        reason=reason.get("Message", "") or instance.get("StateTransitionReason", ""),
    )


def terminate_instance(ec2, instance_id: str) -> bool:
    """True if the instance was alive and is now ending."""
    try:
        changes = ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
            return False
        raise
    return any(c["PreviousState"]["Name"] not in ("shutting-down", "terminated") for c in changes)


def live_instances_by_tag(ec2, tag_key: str, where: Mapping[str, str] | None = None) -> dict[str, str]:
    """Instance id -> the tag's value, for every instance not yet terminated that carries the tag (and, with
    ``where``, those tags with those values)."""
    paginator = ec2.get_paginator("describe_instances")
    found = {}
    filters = [{"Name": "tag-key", "Values": [tag_key]}, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    filters += [{"Name": f"tag:{name}", "Values": [value]} for name, value in (where or {}).items()]
    pages = paginator.paginate(Filters=filters)
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                found[instance["InstanceId"]] = tags[tag_key]
    return found


def billed_cost(hourly_price: float | None, launch_time: dt.datetime, end: dt.datetime | None = None) -> float | None:
    """USD for an instance from its launch until ``end`` (now): per second, at least 60 seconds."""
    if hourly_price is None:
        return None
    seconds = ((end or dt.datetime.now(dt.UTC)) - launch_time).total_seconds()
    return hourly_price * max(seconds, MINIMUM_BILLED_SECONDS) / 3600
