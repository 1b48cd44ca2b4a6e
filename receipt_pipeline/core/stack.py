"""The prod stack (deploy/cloudformation/receipt-pipeline.yaml) as the code sees it.

Its outputs are the environment deploy/prod/dagster.yaml reads, so the Dagster host needs nothing but the
stack's name: ``receipt-pipeline host-exec --stack NAME -- COMMAND`` runs COMMAND in that environment, with
the two secrets fetched by name. ``receipt-pipeline publish --stack NAME`` puts the wheel, and the instance
config beside it, where the host and the GPU instances install them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from botocore.exceptions import ClientError

from receipt_pipeline.core import aws, storage
from receipt_pipeline.core.errors import ExplainedError

INSTANCE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prod" / "dagster.yaml"

# stack output -> the variable of deploy/prod/dagster.yaml (and of the pipeline's prod settings) it fills
OUTPUT_VARIABLES = {
    "Region": "AWS_REGION",
    "ReceiptsTable": "RECEIPTS_TABLE",
    "ArtifactsBucket": "RECEIPT_PIPELINE_BUCKET",
    "WheelPrefix": "RECEIPT_PIPELINE_WHEEL_PREFIX",
    "GpuAmi": "RECEIPT_PIPELINE_GPU_AMI",
    "GpuSubnet": "RECEIPT_PIPELINE_GPU_SUBNET",
    "GpuSecurityGroup": "RECEIPT_PIPELINE_GPU_SECURITY_GROUP",
    "GpuInstanceProfile": "RECEIPT_PIPELINE_GPU_INSTANCE_PROFILE",
    "DatabaseHost": "DAGSTER_PG_HOST",
    "DatabaseUser": "DAGSTER_PG_USERNAME",
    "DatabaseName": "DAGSTER_PG_DB",
}
# variable -> the stack's secret (Secrets Manager, named receipt-pipeline/<deployment>/<secret>); the host and
# the GPU instances fetch each by name when they start, so no value is ever in an output or a file
SECRETS = {
    "DAGSTER_PG_PASSWORD": "dagster-pg-password",
    "RECEIPT_PIPELINE_OPTUNA_STORAGE": "optuna-storage",
}
# a stack that is usable: created, updated, or back where it was after a failed update
READY = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
WHEEL_NAME = re.compile(r"receipt_pipeline-(?P<version>[^-]+)-py3-none-any\.whl")


class StackError(ExplainedError):
    pass


def secret_name(deployment: str, secret: str) -> str:
    return f"receipt-pipeline/{deployment}/{secret}"


def secret_references(deployment: str) -> dict[str, str]:
    """The launcher's ``secrets`` for a stack's deployment: what deploy/prod/dagster.yaml names."""
    return {variable: f"secretsmanager:{secret_name(deployment, secret)}" for variable, secret in SECRETS.items()}


def outputs(stack_name: str) -> dict[str, str]:
    try:
        [stack] = aws.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        raise StackError(f"stack {stack_name}: {error.response['Error']['Message']}") from None
    if stack["StackStatus"] not in READY:
        raise StackError(
            f"stack {stack_name} is {stack['StackStatus']}: its outputs are used once it is one of {sorted(READY)}"
        )
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def environment(stack_name: str, stack_outputs: Mapping[str, str]) -> dict[str, str]:
    """The prod environment from a stack's outputs: every variable deploy/prod/dagster.yaml reads but the secrets."""
    missing = sorted(set(OUTPUT_VARIABLES) - set(stack_outputs))
    if missing:
        raise StackError(f"stack {stack_name} has no output {', '.join(missing)}: is it this project's template?")
    return {"RECEIPT_PIPELINE_DEPLOYMENT": "prod"} | {
        variable: stack_outputs[output] for output, variable in OUTPUT_VARIABLES.items()
    }


def host_environment(stack_name: str) -> dict[str, str]:
    """What the Dagster host's processes run with: the stack's environment and its secrets' values."""
    stack_outputs = outputs(stack_name)
    env = environment(stack_name, stack_outputs)
    deployment = stack_outputs.get("Deployment", "prod")
    client = aws.client("secretsmanager")
    for variable, secret in SECRETS.items():
        name = secret_name(deployment, secret)
        try:
            env[variable] = client.get_secret_value(SecretId=name)["SecretString"]
        except ClientError as error:
            raise StackError(f"stack {stack_name}: secret {name}: {error.response['Error']['Message']}") from None
    return env


def wheel_version(wheel: Path) -> str:
    matched = WHEEL_NAME.fullmatch(wheel.name)
    if not matched:
        raise StackError(f"{wheel}: not a receipt_pipeline wheel (receipt_pipeline-<version>-py3-none-any.whl)")
    return matched["version"]


def publish(stack_name: str, wheel: Path, instance_config: Path = INSTANCE_CONFIG) -> list[str]:
    """Uploads the wheel under the stack's wheel prefix, where the launcher's user data and the host install
    it from, and the prod instance config as ``dagster-<version>.yaml`` beside it; the URIs written."""
    version = wheel_version(wheel)
    prefix = environment(stack_name, outputs(stack_name))["RECEIPT_PIPELINE_WHEEL_PREFIX"]
    written = []
    for name, path in ((wheel.name, wheel), (f"dagster-{version}.yaml", instance_config)):
        uri = storage.join(prefix, name)
        storage.write_bytes(uri, path.read_bytes())
        written.append(uri)
    return written
