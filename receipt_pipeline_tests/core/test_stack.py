"""deploy/cloudformation/receipt-pipeline.yaml, deployed into the emulator: what it creates, and the prod
launcher, host and wheel built from nothing but its outputs. (Its IAM policies: faults/test_security.py.)"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster._core.instance.config import dagster_instance_config
from dagster._core.test_utils import instance_for_test

from receipt_pipeline import cli
from receipt_pipeline.core import aws, stack, storage
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.defs import training
from receipt_pipeline.launcher import no_secrets, tags, user_data
from receipt_pipeline_tests import emulated_stack
from receipt_pipeline_tests.faults.conftest import create_gpu_run, launch

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"


def _resources() -> dict:
    return emulated_stack.template()["Resources"]


def test_the_stack_deploys_and_only_the_types_the_emulator_lacks_are_left_out(prod_stack):
    declared = {logical_id: resource["Type"] for logical_id, resource in _resources().items()}
    not_emulated = set(declared.values()) - emulated_stack.emulated_types()
    # a new type the emulator lacks, or one it has learnt, changes what this suite checks where: look at both
    assert not_emulated == emulated_stack.NOT_EMULATED
    [described] = aws.client("cloudformation").describe_stacks(StackName=prod_stack.name)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    created = {logical_id for logical_id, kind in declared.items() if kind not in not_emulated}
    assert created <= set(prod_stack.resources)
    assert set(stack.OUTPUT_VARIABLES) <= set(prod_stack.outputs)


def test_the_bucket_is_encrypted_versioned_private_tls_only_and_expires_old_checkpoints(prod_stack):
    bucket = prod_stack.outputs["ArtifactsBucket"]
    rules = aws.client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # what the emulator's CloudFormation does not apply to a bucket, read from the template
    declared = _resources()["ArtifactsBucket"]
    properties = declared["Properties"]
    assert declared["DeletionPolicy"] == "Retain"
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    lifecycle = {rule["Id"]: rule for rule in properties["LifecycleConfiguration"]["Rules"]}
    checkpoints = lifecycle["ExpireOldRunCheckpoints"]
    assert checkpoints["Prefix"] == "runs/" and checkpoints["ExpirationInDays"] == {"Ref": "CheckpointRetentionDays"}
    settings = DeploymentSettings.from_env(stack.environment(prod_stack.name, prod_stack.outputs))
    _, checkpoints_uri = training.run_dir_for(settings, "a-run")
    assert checkpoints_uri == f"s3://{bucket}/{checkpoints['Prefix']}a-run"  # where prod keeps checkpoints
    [tls_only] = _resources()["ArtifactsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert tls_only["Effect"] == "Deny" and tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_database_is_encrypted_and_private_and_its_password_is_generated_never_a_parameter_or_output(prod_stack):
    [database] = aws.client("rds").describe_db_instances(DBInstanceIdentifier=prod_stack.resources["Database"])[
        "DBInstances"
    ]
    assert database["Engine"] == "postgres" and database["StorageEncrypted"] is True
    assert database["PubliclyAccessible"] is False
    assert database["Endpoint"]["Address"] == prod_stack.outputs["DatabaseHost"]

    declared = emulated_stack.template()
    properties = declared["Resources"]["Database"]["Properties"]
    assert properties["MasterUserPassword"] == {"Fn::Sub": "{{resolve:secretsmanager:${DatabasePassword}}}"}
    assert "GenerateSecretString" in declared["Resources"]["DatabasePassword"]["Properties"]
    assert not any(re.search("password|secret", name, re.I) for name in declared["Parameters"])
    password = aws.client("secretsmanager").get_secret_value(SecretId=stack.secret_name("prod", "dagster-pg-password"))[
        "SecretString"
    ]
    assert password not in json.dumps(prod_stack.outputs)
    for name, output in declared["Outputs"].items():
        assert "resolve:" not in json.dumps(output, default=str), f"output {name} resolves a secret"


def test_gpu_instances_and_the_host_take_no_inbound_traffic_and_the_database_only_theirs(prod_stack):
    ec2 = aws.client("ec2")
    groups = {
        logical_id: ec2.describe_security_groups(GroupIds=[prod_stack.resources[logical_id]])["SecurityGroups"][0]
        for logical_id in ("GpuSecurityGroup", "HostSecurityGroup", "DatabaseSecurityGroup")
    }
    assert groups["GpuSecurityGroup"]["GroupId"] == prod_stack.outputs["GpuSecurityGroup"]
    assert groups["GpuSecurityGroup"]["IpPermissions"] == [] and groups["HostSecurityGroup"]["IpPermissions"] == []
    [postgres] = groups["DatabaseSecurityGroup"]["IpPermissions"]
    assert (postgres["FromPort"], postgres["ToPort"], postgres.get("IpRanges")) == (5432, 5432, [])
    sources = {pair["GroupId"] for pair in postgres["UserIdGroupPairs"]}
    assert sources == {groups["GpuSecurityGroup"]["GroupId"], groups["HostSecurityGroup"]["GroupId"]}


def test_a_training_run_launched_from_the_stacks_outputs_gets_its_profile_subnet_and_security_group(
    prod_stack, tmp_path, monkeypatch
):
    for variable, value in stack.host_environment(prod_stack.name).items():
        monkeypatch.setenv(variable, value)
    shutil.copy(stack.INSTANCE_CONFIG, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))

    with instance_for_test(overrides={"run_launcher": config["run_launcher"]}) as instance:
        # the worker's environment, copied from the host's: the stack's database
        assert instance.run_launcher.worker_environment()["DAGSTER_PG_HOST"] == prod_stack.outputs["DatabaseHost"]
        run = launch(instance, create_gpu_run(instance))
        instance_id = run.tags[tags.INSTANCE_ID]
        ec2 = aws.client("ec2")
        [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        [described] = reservation["Instances"]
        text = base64.b64decode(
            ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
        ).decode()
        assert instance.run_launcher.terminate(run.run_id) is True

    outputs = prod_stack.outputs
    assert described["IamInstanceProfile"]["Arn"] == outputs["GpuInstanceProfile"]
    assert described["SubnetId"] == outputs["GpuSubnet"]
    assert [group["GroupId"] for group in described["SecurityGroups"]] == [outputs["GpuSecurityGroup"]]
    assert described["ImageId"] == outputs["GpuAmi"]
    instance_tags = {tag["Key"]: tag["Value"] for tag in described["Tags"]}
    assert instance_tags[tags.INSTANCE_DEPLOYMENT] == outputs["Deployment"] == "prod"
    spec = user_data.read_run_spec(text)
    assert spec["secrets"] == stack.secret_references(outputs["Deployment"])  # names, fetched on the instance
    assert f"{outputs['WheelPrefix']}/receipt_pipeline-" in text
    for variable in stack.SECRETS:
        assert stack.host_environment(prod_stack.name)[variable] not in text


def _host_exec(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "receipt_pipeline.cli", "host-exec", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_host_exec_runs_a_command_with_the_stacks_environment_and_its_secrets(prod_stack):
    printed = _host_exec(
        "--stack", prod_stack.name, "--", sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"
    )
    assert printed.returncode == 0, printed.stderr
    env = json.loads(printed.stdout)
    for output, variable in stack.OUTPUT_VARIABLES.items():
        assert env[variable] == prod_stack.outputs[output], variable
    secrets = aws.client("secretsmanager")
    for variable, secret in stack.SECRETS.items():
        value = secrets.get_secret_value(SecretId=stack.secret_name("prod", secret))["SecretString"]
        assert env[variable] == value and value not in printed.stderr
    assert env["RECEIPT_PIPELINE_DEPLOYMENT"] == "prod"

    missing = _host_exec("--stack", "no-such-stack", "--", "true")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "Error: stack no-such-stack: Stack with id no-such-stack does not exist"
    ]


def _host_user_data() -> str:
    return _resources()["DagsterHost"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]


def test_the_hosts_user_data_is_valid_bash_holds_no_secret_and_installs_what_publish_uploads(tmp_path):
    script = re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: f"stand-in-{m[1].replace(':', '-')}", _host_user_data())
    (tmp_path / "host.sh").write_text(script)
    checked = subprocess.run(["bash", "-n", str(tmp_path / "host.sh")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert no_secrets.secret_kind(script) is None
    assert "wheels=s3://${ArtifactsBucket}/wheels" in _host_user_data()  # the WheelPrefix output
    for name in ("receipt_pipeline-${PipelineVersion}-py3-none-any.whl", "dagster-${PipelineVersion}.yaml"):
        assert name in _host_user_data()
    assert "host-exec --stack ${AWS::StackName}" in _host_user_data()


def test_publish_uploads_the_wheel_where_the_host_and_the_launcher_install_it(prod_stack):
    result = CliRunner().invoke(cli.main, ["publish", "--stack", prod_stack.name])
    assert result.exit_code == 0, result.output
    prefix = prod_stack.outputs["WheelPrefix"]
    wheel_uri = f"{prefix}/receipt_pipeline-{VERSION}-py3-none-any.whl"
    assert result.stdout.split() == [wheel_uri, f"{prefix}/dagster-{VERSION}.yaml"]
    # the same object the GPU instance's user data copies
    assert f"aws s3 cp {wheel_uri} " in user_data.install_commands(VERSION, wheel_prefix=prefix)
    with zipfile.ZipFile(io.BytesIO(storage.read_bytes(wheel_uri))) as wheel:
        names = set(wheel.namelist())
    assert {"receipt_pipeline/core/stack.py", "receipt_pipeline/launcher/user_data.sh"} <= names
    assert storage.read_bytes(f"{prefix}/dagster-{VERSION}.yaml") == stack.INSTANCE_CONFIG.read_bytes()


def test_publish_refuses_a_file_that_is_not_the_projects_wheel_and_a_stack_that_is_not_ready(prod_stack, tmp_path):
    other = tmp_path / "other-1.0-py3-none-any.whl"
    other.write_bytes(b"PK")
    refused = CliRunner().invoke(cli.main, ["publish", "--stack", prod_stack.name, "--wheel", str(other)])
    assert refused.exit_code == 1 and "not a receipt_pipeline wheel" in refused.output
    with pytest.raises(stack.StackError, match="stack missing-stack: Stack with id missing-stack does not exist"):
        stack.outputs("missing-stack")
    with pytest.raises(stack.StackError, match="has no output ArtifactsBucket"):
        stack.environment("x", {k: "v" for k in stack.OUTPUT_VARIABLES if k != "ArtifactsBucket"})
