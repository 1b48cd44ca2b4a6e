"""Security: no secret value in user data, tags or the event log; IMDSv2 and encrypted volumes on every
placement; no pickle from S3; the dev UI on loopback; and the prod stack's IAM policies covering exactly the
AWS calls the code makes.
"""

from __future__ import annotations

import ast
import base64
import json
import pickle
import re
import uuid
from pathlib import Path

import botocore.session
import dagster as dg
import numpy as np
import pytest
import yaml
from botocore import xform_name
from dagster._serdes.config_class import ConfigurableClassData
from safetensors.numpy import save as save_safetensors

from receipt_pipeline import cli
from receipt_pipeline.core import aws, base_model, evaluation, model, stack, storage
from receipt_pipeline.core.checkpoint_store import COMPLETE_MARKER, CheckpointError, restore_latest
from receipt_pipeline.launcher import EC2GpuRunLauncher, ec2, tags, user_data
from receipt_pipeline.launcher.no_secrets import SecretValueError
from receipt_pipeline_tests import emulated_stack
from receipt_pipeline_tests.faults.conftest import (
    REPO_ROOT,
    create_gpu_run,
    event_texts,
    gpu_dagster_instance,
    launch,
    monitor,
    run_instances_of,
)
from receipt_pipeline_tests.launcher.emulated_ec2 import DEEP_LEARNING_AMI, EMULATOR_ACCOUNT, hold_pending

# ------------------------------------------------------------------------------ secrets

PARAMETER = "/receipt-pipeline/fault-suite/pg-password"
SECRET_REFERENCES = {
    "DAGSTER_PG_PASSWORD": f"ssm:{PARAMETER}",
    "HF_TOKEN": "secretsmanager:receipt-pipeline/hf-token",
    "RECEIPT_PIPELINE_OPTUNA_STORAGE": "ssm:/receipt-pipeline/fault-suite/optuna-url",
}


def _planted_secrets() -> dict[str, str]:
    """Secret values in the launching process's environment (and in SSM): none may leave it."""
    mark = uuid.uuid4().hex
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + mark[:16].upper(),
        "AWS_SECRET_ACCESS_KEY": f"wJalrXUtnFEMI/K7MDENG/{mark}",
        "AWS_SESSION_TOKEN": f"IQoJb3JpZ2luX2VjE{mark}",
        "DAGSTER_PG_PASSWORD": f"pg-password-{mark}",
        "HF_TOKEN": f"hf_{mark}",
        "RECEIPT_PIPELINE_OPTUNA_STORAGE": f"postgresql://optuna:optuna-{mark}@db.internal/optuna",
    }


def _instance_documents(instance_id: str) -> list[str]:
    """What EC2 holds about an instance and anyone with Describe* can read: user data, instance and volume tags."""
    client = aws.client("ec2")
    raw = client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    [reservation] = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    volumes = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])
    return [base64.b64decode(raw).decode(), json.dumps(reservation, default=str), json.dumps(volumes, default=str)]


def test_no_secret_value_reaches_user_data_ec2_tags_run_tags_or_the_event_log(proxy, network, suite_id, monkeypatch):
    secrets = _planted_secrets()
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    aws.client("ssm").put_parameter(Name=PARAMETER, Value=secrets["DAGSTER_PG_PASSWORD"], Type="SecureString")
    config = {
        "env_vars": ["RECEIPTS_TABLE", "AWS_REGION", "RECEIPT_PIPELINE_DEPLOYMENT=prod"],
        "secrets": SECRET_REFERENCES,
    }
    monkeypatch.setenv("RECEIPTS_TABLE", "receipts")
    with gpu_dagster_instance(network, suite_id, **config) as instance:
        launched = [
            launch(instance, create_gpu_run(instance)),
            launch(instance, create_gpu_run(instance, {tags.INSTANCE_TYPE: "g4dn.xlarge", tags.MARKET: "on-demand"})),
        ]
        proxy.refuse_capacity("g5.xlarge", "spot")  # a fallback, its refusal recorded in an event
        launched.append(launch(instance, create_gpu_run(instance)))
        never_started = launch(instance, create_gpu_run(instance))
        hold_pending(never_started.tags[tags.INSTANCE_ID])
        monitor(instance, never_started.run_id)  # the start timeout's message
        for instance_type, market in ec2.placements(instance.run_launcher.spec):
            proxy.refuse_capacity(instance_type, market)
        failed = [create_gpu_run(instance)]
        with pytest.raises(ec2.CapacityError):
            launch(instance, failed[0])
        proxy.restore_capacity()
        proxy.fail_action("DescribeSpotPriceHistory", "UnauthorizedOperation")
        failed.append(create_gpu_run(instance))
        with pytest.raises(ec2.LaunchError):
            launch(instance, failed[-1])

        runs = [instance.get_run_by_id(run.run_id) for run in [*launched, never_started, *failed]]
        documents = {}
        for run in runs:
            documents[f"run {run.run_id} tags"] = json.dumps(run.tags)
            documents[f"run {run.run_id} events"] = event_texts(instance, run.run_id)
            for instance_id in run_instances_of(run.run_id):
                for index, text in enumerate(_instance_documents(instance_id)):
                    documents[f"instance {instance_id} document {index}"] = text
        for run in launched:
            instance.run_launcher.terminate(run.run_id)

    user_data_documents = [text for text in documents.values() if text.startswith("#!/bin/bash")]
    assert len(user_data_documents) == 5  # four launched, one ended after its price lookup failed
    for where, text in documents.items():
        for name, value in secrets.items():
            assert value not in text, f"the value of {name} is in {where}"
    for text in user_data_documents:
        spec = user_data.read_run_spec(text)
        assert spec["secrets"] == SECRET_REFERENCES  # references only
        assert spec["env"] == {
            "RECEIPTS_TABLE": "receipts",
            "AWS_REGION": "us-east-1",
            "RECEIPT_PIPELINE_DEPLOYMENT": "prod",
        }


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("env_vars", ["AWS_SECRET_ACCESS_KEY"], "env_vars variable AWS_SECRET_ACCESS_KEY is named like a secret"),
        ("env_vars", ["DAGSTER_PG_PASSWORD"], "env_vars variable DAGSTER_PG_PASSWORD is named like a secret"),
        ("env_vars", ["DATABASE_URL=postgresql://app:s3cr3t-9f2a@db/app"], "DATABASE_URL holds .* a password in a URL"),
        ("worker_env", {"HF_TOKEN": "hf_s3cr3t9f2a"}, "worker_env variable HF_TOKEN is named like a secret"),
        ("worker_env", {"UPLOADER": "AKIAS3CR3T9F2AXXXXXX"}, "UPLOADER holds what looks like an AWS access key id"),
        ("extra_tags", {"db-password": "s3cr3t-9f2a"}, "extra_tags tag db-password is named like a secret"),
    ],
)
def test_a_launcher_config_that_would_copy_a_secret_is_refused_naming_the_variable_not_the_value(setting, value, named):
    with pytest.raises(SecretValueError, match=named) as refused:
        EC2GpuRunLauncher(deployment="test", ami=DEEP_LEARNING_AMI, **{setting: value})
    assert "s3cr3t" not in str(refused.value).lower() and "ssm:NAME" in str(refused.value)


def test_a_copied_variable_holding_a_secret_fails_the_launch_before_any_instance_starts(
    proxy, network, suite_id, monkeypatch
):
    password = f"optuna-{uuid.uuid4().hex}"
    monkeypatch.setenv("RECEIPT_PIPELINE_OPTUNA_STORAGE", f"postgresql://optuna:{password}@db.internal/optuna")
    with gpu_dagster_instance(network, suite_id, env_vars=["RECEIPT_PIPELINE_OPTUNA_STORAGE"]) as instance:
        run = create_gpu_run(instance)
        with pytest.raises(SecretValueError, match="RECEIPT_PIPELINE_OPTUNA_STORAGE holds .* a password in a URL"):
            launch(instance, run)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        log = event_texts(instance, run.run_id)
    assert "RECEIPT_PIPELINE_OPTUNA_STORAGE holds" in log and password not in log
    assert run_instances_of(run.run_id) == {}


def test_user_data_refuses_a_literal_secret_in_the_instance_config_or_the_package_index_url():
    with dg.instance_for_test() as instance:
        ref = instance.get_ref()
    postgres = {"postgres_db": {"hostname": "db.internal", "username": "dagster", "db_name": "dagster"}}

    def with_password(password) -> object:
        config = {**postgres, "postgres_db": {**postgres["postgres_db"], "password": password}}
        return ref._replace(
            storage_data=ConfigurableClassData("dagster_postgres", "DagsterPostgresStorage", yaml.safe_dump(config))
        )

    referenced = user_data.worker_dagster_yaml(with_password({"env": "DAGSTER_PG_PASSWORD"}))
    assert "DAGSTER_PG_PASSWORD" in referenced  # a reference is copied as it is
    with pytest.raises(SecretValueError, match=r"storage\.custom\.config\.postgres_db\.password is a literal secret"):
        user_data.worker_dagster_yaml(with_password("s3cr3t-9f2a"))

    install = user_data.install_commands("1.0.0", index_url="https://ci:s3cr3t-9f2a@pypi.internal/simple")
    with pytest.raises(user_data.UserDataError, match="run r1 holds what looks like a password in a URL") as refused:
        user_data.render("r1", "1.0.0", {"run_id": "r1", "secrets": {}}, install)
    assert "s3cr3t" not in str(refused.value)


# ------------------------------------------------------------------------------ IMDSv2 and encryption


def test_every_placement_the_launcher_uses_requires_imdsv2_and_encrypts_its_volumes(dagster_instance):
    client = aws.client("ec2")
    placements = ec2.placements(dagster_instance.run_launcher.spec)
    assert len(placements) == 6
    for instance_type, market in placements:
        run_tags = {tags.INSTANCE_TYPE: instance_type, tags.MARKET: market}
        run = launch(dagster_instance, create_gpu_run(dagster_instance, run_tags))
        assert (run.tags[tags.RECORDED_INSTANCE_TYPE], run.tags[tags.RECORDED_MARKET]) == (instance_type, market)
        instance_id = run.tags[tags.INSTANCE_ID]
        [reservation] = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
        described = reservation["Instances"][0]
        where = f"{instance_type} {market} ({instance_id})"
        assert described["MetadataOptions"]["HttpTokens"] == "required", where
        assert described["MetadataOptions"]["HttpPutResponseHopLimit"] == 1, where  # no container reaches IMDS
        assert "KeyName" not in described, where
        volumes = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])
        assert volumes["Volumes"] and all(volume["Encrypted"] for volume in volumes["Volumes"]), where
        assert dagster_instance.run_launcher.terminate(run.run_id) is True


# ------------------------------------------------------------------------------ no pickle from S3


class _Payload:
    """A pickle that creates a file when it is loaded: the proof of whether anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _planted_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def test_the_planted_pickle_is_live(tmp_path):
    # what the refusal tests plant runs code when unpickled: without this, their markers would prove nothing
    pickle.loads(_planted_pickle(tmp_path / "loaded")).close()
    assert (tmp_path / "loaded").exists()


def test_a_base_model_or_classifier_with_only_pickled_weights_on_s3_is_refused_unloaded(
    artifacts_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("RECEIPT_PIPELINE_MODEL_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "unpickled"
    prefix = f"s3://{artifacts_bucket}/models/planted"
    storage.write_bytes(f"{prefix}/config.json", json.dumps({"model_type": "layoutlm"}).encode())
    storage.write_bytes(f"{prefix}/pytorch_model.bin", _planted_pickle(marker))
    with pytest.raises(base_model.BaseModelError, match=f"{prefix}.*only pickled weights .*pytorch_model.bin"):
        model.load_model(prefix, ["O", "B-TOTAL", "I-TOTAL"])
    with pytest.raises(base_model.BaseModelError, match="pickles from S3 are never loaded"):
        evaluation.load_classifier(prefix)
    assert not marker.exists()
    assert not any(path.suffix == ".bin" for path in (tmp_path / "cache").rglob("*"))


def test_a_checkpoint_on_s3_with_only_pickled_weights_is_refused_and_its_pickles_are_never_fetched(
    artifacts_bucket, tmp_path
):
    marker = tmp_path / "unpickled"
    pickles = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
    weights = save_safetensors({"classifier.weight": np.zeros((2, 2), dtype=np.float32)})

    def plant(run_uri: str, step: int, files: dict[str, bytes]) -> None:
        for name, data in {**files, "trainer_state.json": b"{}", COMPLETE_MARKER: b"{}"}.items():
            storage.write_bytes(f"{run_uri}/checkpoint-{step}/{name}", data)

    pickled_only = f"s3://{artifacts_bucket}/runs/pickled-only"
    plant(pickled_only, 8, {"pytorch_model.bin": _planted_pickle(marker), "optimizer.pt": _planted_pickle(marker)})
    with pytest.raises(
        CheckpointError, match=r"checkpoint-8 has only pickled weights \(optimizer.pt, pytorch_model.bin\)"
    ):
        restore_latest(pickled_only, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    mixed = f"s3://{artifacts_bucket}/runs/mixed"
    plant(mixed, 4, {"model.safetensors": weights, **{name: _planted_pickle(marker) for name in pickles}})
    restored = restore_latest(mixed, tmp_path / "restored")
    assert sorted(path.name for path in restored.iterdir()) == [
        COMPLETE_MARKER,
        "model.safetensors",
        "trainer_state.json",
    ]
    assert not marker.exists()


def test_no_code_path_unpickles_and_every_model_load_asks_for_safetensors():
    unpicklers = {("pickle", "load"), ("pickle", "loads"), ("torch", "load"), ("joblib", "load"), ("dill", "load")}
    offenders = []
    for path in sorted((REPO_ROOT / "receipt_pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            if (receiver, node.func.attr) in unpicklers:
                offenders.append(f"{where} calls {receiver}.{node.func.attr}")
            if node.func.attr == "from_pretrained" and "Tokenizer" not in receiver:
                safe = any(
                    k.arg == "use_safetensors" and getattr(k.value, "value", None) is True for k in node.keywords
                )
                if not safe:
                    offenders.append(f"{where} calls {receiver}.from_pretrained without use_safetensors=True")
    assert offenders == []


# ------------------------------------------------------------------------------ the dev UI


def test_the_dev_ui_binds_to_loopback_unless_a_flag_or_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv(cli.UI_HOST_VARIABLE, raising=False)

    def ui_host(*args: str) -> str:
        return cli.dev.make_context("dev", list(args)).params["ui_host"]

    command = cli.dagster_dev_command(ui_host(), 3000)
    assert command[command.index("-h") + 1] == "127.0.0.1" and command[command.index("-p") + 1] == "3000"
    assert ui_host("--ui-host", "0.0.0.0") == "0.0.0.0"
    monkeypatch.setenv(cli.UI_HOST_VARIABLE, "10.0.0.5")
    assert ui_host() == "10.0.0.5"
    assert cli.local_aws_command.make_context("local-aws", []).params["host"] == "127.0.0.1"  # the emulator too


# ------------------------------------------------------------------------------ the stack's IAM policies

PROD_YAML = REPO_ROOT / "deploy" / "prod" / "dagster.yaml"
HOST, INSTANCE = "Dagster host", "GPU instance role"
ROLES = {HOST: "HostRole", INSTANCE: "GpuInstanceRole"}  # logical ids in deploy/cloudformation
TEMPLATE = "deploy/cloudformation/receipt-pipeline.yaml"
# which principal runs each module that calls AWS; a new module calling AWS must be placed here
RUNS_ON = {
    "receipt_pipeline/launcher/ec2.py": {HOST},  # the launcher, terminate() and the reaper sensor
    "receipt_pipeline/core/dynamo_reader.py": {HOST},  # ingestion runs and the new-labels sensor
    "receipt_pipeline/core/storage.py": {HOST, INSTANCE},
    "receipt_pipeline/core/stack.py": {HOST},  # `host-exec`, which starts the host's services
    "receipt_pipeline/launcher/bootstrap.py": {INSTANCE},
    "receipt_pipeline/launcher/user_data.py": {INSTANCE},  # `aws s3 cp` of the wheel
    TEMPLATE: {HOST},  # the host's user data: `aws s3 cp` of the wheel and the instance config
    # the local emulator only: provisioning, seeding, `receipt-pipeline dev`
    "receipt_pipeline/cli.py": set(),
    "receipt_pipeline/core/local_aws.py": set(),
    "receipt_pipeline/core/synthetic.py": set(),
    # opt-in, off in prod: the host runs it once the operator attaches the README's write policy (tested below)
    "receipt_pipeline/core/proposals.py": set(),
}
# IAM actions of an operation where they are not "<service>:<Operation>"
IMPLIED = {
    ("ec2", "RunInstances"): {"ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"},  # tags on create, a profile
    ("s3", "ListObjectsV2"): {"s3:ListBucket"},
    ("s3", "HeadObject"): {"s3:GetObject"},
    # boto3's managed transfers: HeadObject, then GetObject (ranged), or multipart uploads and copies that
    # AbortMultipartUpload ends when a part fails
    ("s3", "copy"): {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"},
    ("s3", "download_file"): {"s3:GetObject"},
    ("s3", "download_fileobj"): {"s3:GetObject"},
    ("s3", "upload_file"): {"s3:PutObject", "s3:AbortMultipartUpload"},
    ("s3", "upload_fileobj"): {"s3:PutObject", "s3:AbortMultipartUpload"},
    ("s3", "cp"): {"s3:GetObject"},  # the AWS CLI in user data
}
S3_MANAGED = {"copy", "upload_file", "download_file", "upload_fileobj", "download_fileobj"}


def _prod_launcher() -> dict:
    return yaml.safe_load(PROD_YAML.read_text())["run_launcher"]["config"]


def _configured(service: str, operation: str) -> bool:
    """Whether the prod config makes a call the code can make: the bootstrap fetches ``ssm:`` and
    ``secretsmanager:`` secrets, and prod names only the second kind."""
    kinds = {reference.partition(":")[0] for reference in _prod_launcher()["secrets"].values()}
    if (service, operation) == ("ssm", "GetParameter"):
        return "ssm" in kinds
    if (service, operation) == ("secretsmanager", "GetSecretValue"):
        return "secretsmanager" in kinds
    return True


def _operations_by_module() -> dict[str, set[tuple[str, str]]]:
    """(service, operation) of every AWS call in the package, by module: boto3 client methods, paginators,
    operation names handed to a helper with the client, boto3's managed S3 transfers, and ``aws s3 cp`` (in
    the package and in the stack's user data)."""
    session = botocore.session.get_session()
    sources = {path: path.read_text() for path in sorted((REPO_ROOT / "receipt_pipeline").rglob("*.py"))}
    services = {m for text in sources.values() for m in re.findall(r'client\(\s*"([a-z0-9-]+)"', text)}
    operations: dict[str, set[tuple[str, str]]] = {}
    for service in services:
        for name in session.get_service_model(service).operation_names:
            operations.setdefault(xform_name(name), set()).add((service, name))
    found: dict[str, set[tuple[str, str]]] = {}
    for path, text in sources.items():
        module = str(path.relative_to(REPO_ROOT))
        calls = set()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            attribute = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if attribute in operations:
                calls |= operations[attribute]
            if attribute in S3_MANAGED and re.search(r"s3|client", ast.unparse(node.func.value)):
                calls.add(("s3", attribute))
            with_client = attribute == "get_paginator" or any(
                isinstance(arg, ast.Name) and "client" in arg.id for arg in node.args
            )
            for arg in node.args:
                if with_client and isinstance(arg, ast.Constant) and arg.value in operations:
                    calls |= operations[arg.value]
        if re.search(r"\baws s3 cp\b", text):
            calls.add(("s3", "cp"))
        if calls:
            found[module] = calls
    host = emulated_stack.template()["Resources"]["DagsterHost"]
    host_user_data = host["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    cli_calls = set(re.findall(r"\baws ([a-z0-9-]+) ([a-z0-9-]+)\b", host_user_data))
    assert cli_calls == {("s3", "cp")}, f"the host's user data calls {sorted(cli_calls)}: place them in IMPLIED"
    found[TEMPLATE] = {("s3", "cp")}
    return found


def _iam_actions(service: str, operation: str) -> set[str]:
    return IMPLIED.get((service, operation), {f"{service}:{operation}"})


def _policies(stack) -> dict[str, dict]:
    """The two principals' policies as the stack created them in the emulator's IAM."""
    return {principal: stack.role_policy(logical_id) for principal, logical_id in ROLES.items()}


def _listed(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _statements(policy: dict, action: str) -> list[dict]:
    return [s for s in policy["Statement"] if s["Effect"] == "Allow" and action in _listed(s["Action"])]


def _allowed(policy: dict) -> set[str]:
    return {a for s in policy["Statement"] for a in _listed(s["Action"])}


def test_the_stacks_policies_allow_exactly_the_aws_calls_each_principal_makes(prod_stack):
    policies = _policies(prod_stack)
    found = _operations_by_module()
    unplaced = {module: sorted(calls) for module, calls in found.items() if module not in RUNS_ON}
    assert unplaced == {}, "modules calling AWS that no principal is known to run: place them in RUNS_ON"
    assert ("ec2", "RunInstances") in found["receipt_pipeline/launcher/ec2.py"]  # the scan sees the launcher
    for principal, policy in policies.items():
        needed = {
            action
            for module, calls in found.items()
            if principal in RUNS_ON[module]
            for service, operation in calls
            if _configured(service, operation)
            for action in _iam_actions(service, operation)
        }
        allowed = _allowed(policy)
        assert not [a for a in allowed if "*" in a], f"{principal}: wildcard actions"
        assert needed - allowed == set(), f"{principal}: the code calls what the stack's policy does not allow"
        assert allowed - needed == set(), f"{principal}: the stack's policy allows what the code never calls"
        resources = [r for s in policy["Statement"] for r in _listed(s["Resource"]) if r is not None]
        assert all(r == "*" or r.startswith("arn:aws:") for r in resources), f"{principal}: {resources}"
    # the operator's way into the host (Session Manager) is the one managed policy, which the code does not
    # use; read from the template, since the emulator's CloudFormation does not attach managed policies
    declared = emulated_stack.template()["Resources"]
    managed = {
        principal: declared[role]["Properties"].get("ManagedPolicyArns", []) for principal, role in ROLES.items()
    }
    assert managed == {
        HOST: [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}],
        INSTANCE: [],
    }


def _readme_proposal_policy() -> dict:
    section = (REPO_ROOT / "README.md").read_text().split("### IAM: the label-proposal writer", 1)[1]
    return json.loads(section.split("```json", 1)[1].split("```", 1)[0])


def test_the_readmes_proposal_policy_allows_exactly_the_writers_calls_and_item_shape():
    from receipt_pipeline.core import proposals

    [statement] = _readme_proposal_policy()["Statement"]
    needed = {action for service, operation in _operations_by_module()["receipt_pipeline/core/proposals.py"]
              for action in _iam_actions(service, operation)}  # fmt: skip
    assert needed == set(_listed(statement["Action"])) == {"dynamodb:PutItem"}
    assert statement["Resource"].endswith(":table/RECEIPTS_TABLE"), "the table, not its indexes"
    condition = statement["Condition"]
    assert condition["ForAllValues:StringLike"] == {"dynamodb:LeadingKeys": ["IMAGE#*"]}
    item = proposals.proposal_item(proposals.Proposal(("0a", 1, 1, 1), "TAX", 0.9), "v", "2026-01-01T00:00:00")
    assert set(condition["ForAllValues:StringEquals"]["dynamodb:Attributes"]) == set(item)
    assert item["PK"].startswith("IMAGE#")


def _ec2_arn(stack, resource: str) -> str:
    return f"arn:aws:ec2:{stack.outputs['Region']}:{EMULATOR_ACCOUNT}:{resource}"


def test_the_hosts_policy_holds_the_launchers_requests_to_imdsv2_encryption_its_tags_and_its_stack(prod_stack):
    host = _policies(prod_stack)[HOST]
    prod = _prod_launcher()
    spec = ec2.InstanceSpec(ami="ami-0", instance_types=prod["instance_types"], extra_tags=prod["extra_tags"])
    request = ec2.run_instances_request(spec, spec.instance_types[0], ec2.SPOT, "", {})
    request_tags = {t["Key"]: t["Value"] for t in request["TagSpecifications"][0]["Tags"]}

    [on_instances] = [
        s for s in _statements(host, "ec2:RunInstances") if s["Resource"] == _ec2_arn(prod_stack, "instance/*")
    ]
    condition = on_instances["Condition"]["StringEquals"]
    assert condition["ec2:MetadataHttpTokens"] == request["MetadataOptions"]["HttpTokens"] == "required"
    # the emulator joins a CommaDelimitedList parameter into one string where CloudFormation gives a list
    allowed_types = condition["ec2:InstanceType"]
    allowed_types = allowed_types.split(",") if isinstance(allowed_types, str) else allowed_types
    assert set(spec.instance_types) <= set(allowed_types)
    assert request_tags["project"] == condition["aws:RequestTag/project"]
    [on_volumes] = [
        s for s in _statements(host, "ec2:RunInstances") if s["Resource"] == _ec2_arn(prod_stack, "volume/*")
    ]
    assert on_volumes["Condition"] == {"Bool": {"ec2:Encrypted": "true"}}
    assert all(mapping["Ebs"]["Encrypted"] for mapping in request["BlockDeviceMappings"])
    [placement] = [s for s in _statements(host, "ec2:RunInstances") if "Condition" not in s]
    outputs = prod_stack.outputs
    assert {
        _ec2_arn(prod_stack, f"subnet/{outputs['GpuSubnet']}"),
        _ec2_arn(prod_stack, f"security-group/{outputs['GpuSecurityGroup']}"),
        f"arn:aws:ec2:{outputs['Region']}::image/{outputs['GpuAmi']}",
    } <= set(placement["Resource"])
    [terminate] = _statements(host, "ec2:TerminateInstances")
    assert terminate["Condition"]["StringEquals"]["aws:ResourceTag/project"] == request_tags["project"]
    # launched with the deployment's tag, and only its own instances can be ended
    deployment = f"aws:ResourceTag/{tags.INSTANCE_DEPLOYMENT}"
    assert terminate["Condition"]["StringEquals"][deployment] == prod["deployment"] == outputs["Deployment"]
    assert condition[f"aws:RequestTag/{tags.INSTANCE_DEPLOYMENT}"] == prod["deployment"]
    [tagging] = _statements(host, "ec2:CreateTags")
    assert tagging["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    [pass_role] = _statements(host, "iam:PassRole")
    assert pass_role["Resource"] == outputs["GpuInstanceRole"]
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    [describe_stack] = _statements(host, "cloudformation:DescribeStacks")
    assert describe_stack["Resource"].split("/")[1] == prod_stack.name  # its own stack only


def test_each_principal_reads_exactly_the_secrets_the_prod_launcher_names(prod_stack):
    # the emulator's CloudFormation has no secrets (emulated_stack.NOT_EMULATED): the policies name them by
    # Ref, read from the template, and each Ref'd secret's name is the one deploy/prod/dagster.yaml fetches
    declared = emulated_stack.template()
    default_deployment = declared["Parameters"]["DeploymentName"]["Default"]
    assert default_deployment == _prod_launcher()["deployment"]
    names = {}
    for logical_id, resource in declared["Resources"].items():
        if resource["Type"] == "AWS::SecretsManager::Secret":
            names[logical_id] = resource["Properties"]["Name"]["Fn::Sub"].replace(
                "${DeploymentName}", default_deployment
            )
    named = {ref.partition(":")[2] for ref in _prod_launcher()["secrets"].values()}
    assert set(names.values()) == named == {stack.secret_name("prod", secret) for secret in stack.SECRETS.values()}
    for logical_id in ROLES.values():
        statements = declared["Resources"][logical_id]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        [secret_values] = [s for s in statements if s["Action"] == "secretsmanager:GetSecretValue"]
        assert secret_values["Resource"] == [{"Ref": logical} for logical in names], logical_id
