"""The prod stack deployed into the emulator's CloudFormation, and the template read as CloudFormation reads it.

The emulator creates every resource type of the template but two; :data:`NOT_EMULATED` names them, and a test
fails when the emulator starts to support one (or the template gains another it does not). Of those, the
secrets are stood in for here exactly as the template declares them (name, generated password), so that what
reads them (the host, a GPU instance) is tested against real Secrets Manager calls; the bucket policy is
checked in the template itself.
"""

from __future__ import annotations

import ast
import uuid
from dataclasses import dataclass
from pathlib import Path

from cfnlint.decode import cfn_yaml

from receipt_pipeline.core import aws, stack
from receipt_pipeline_tests.launcher.emulated_ec2 import DEEP_LEARNING_AMI

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "cloudformation" / "receipt-pipeline.yaml"
HOST_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
NOT_EMULATED = {"AWS::S3::BucketPolicy", "AWS::SecretsManager::Secret"}


def template() -> dict:
    """The template with its short-form intrinsics (``!Sub``, ``!Ref``) as CloudFormation parses them."""
    return cfn_yaml.load(str(TEMPLATE))


def emulated_types() -> set[str]:
    from moto.cloudformation.parsing import get_model_map

    return set(get_model_map())


@dataclass(frozen=True)
class DeployedStack:
    name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    subnet_ids: list[str]
    vpc_id: str

    def role_policy(self, logical_id: str) -> dict:
        """A role's inline policy as the stack created it in IAM."""
        iam = aws.client("iam")
        role = self.resources[logical_id]
        [policy_name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
        document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        if isinstance(document, str):
            # the emulator's CloudFormation stores a policy given as a mapping as Python's repr of it
            document = ast.literal_eval(document)
        return document


def _stand_in_secrets(deployment: str, database_host: str) -> None:
    """The template's two secrets, as it declares them: the emulator's CloudFormation skips the type."""
    declared = template()["Resources"]
    client = aws.client("secretsmanager")
    generated = declared["DatabasePassword"]["Properties"]["GenerateSecretString"]
    password = client.get_random_password(
        PasswordLength=generated["PasswordLength"], ExcludePunctuation=generated["ExcludePunctuation"]
    )["RandomPassword"]
    client.create_secret(Name=stack.secret_name(deployment, "dagster-pg-password"), SecretString=password)
    url = f"postgresql://dagster:{password}@{database_host}:5432/optuna"
    client.create_secret(Name=stack.secret_name(deployment, "optuna-storage"), SecretString=url)


def deploy(deployment: str = "prod", table: str = "receipts") -> DeployedStack:
    """Creates a VPC with two subnets and deploys the template into it, as docs/deploy.md does."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{index}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for index, zone in enumerate(["us-east-1a", "us-east-1b"])
    ]
    ssm = aws.client("ssm")
    if not ssm.get_parameters(Names=[HOST_AMI_PARAMETER])["Parameters"]:  # AWS's public parameter
        ssm.put_parameter(Name=HOST_AMI_PARAMETER, Value=DEEP_LEARNING_AMI, Type="String")
    name = f"receipt-pipeline-{uuid.uuid4().hex[:8]}"
    parameters = {
        "DeploymentName": deployment,
        "VpcId": vpc,
        "SubnetIds": ",".join(subnets),
        "GpuSubnetId": subnets[1],
        "ReceiptsTableName": table,
        "GpuAmiId": DEEP_LEARNING_AMI,
    }
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(StackName=name)
    summaries = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    resources = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in summaries}
    outputs = stack.outputs(name)
    _stand_in_secrets(deployment, outputs["DatabaseHost"])
    return DeployedStack(name, outputs, resources, subnets, vpc)
