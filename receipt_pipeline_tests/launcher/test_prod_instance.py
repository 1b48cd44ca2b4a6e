"""deploy/prod/dagster.yaml: a valid instance config whose launcher builds from it (no Postgres needed), reading
nothing but the prod stack's outputs and secrets."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dagster as dg
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from receipt_pipeline.core import stack
from receipt_pipeline.defs import training
from receipt_pipeline.launcher import EC2GpuRunLauncher, tags

PROD_YAML = Path(__file__).resolve().parents[2] / "deploy" / "prod" / "dagster.yaml"
PROD_ENV = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "fetched-at-start",
    "DAGSTER_PG_DB": "dagster",
    "RECEIPT_PIPELINE_BUCKET": "receipts-prod",
    "RECEIPTS_TABLE": "receipts",
    "AWS_REGION": "eu-west-1",
    "RECEIPT_PIPELINE_GPU_AMI": "ami-0123456789abcdef0",
    "RECEIPT_PIPELINE_GPU_SUBNET": "subnet-0123",
    "RECEIPT_PIPELINE_GPU_SECURITY_GROUP": "sg-0123",
    "RECEIPT_PIPELINE_GPU_INSTANCE_PROFILE": "receipt-pipeline-gpu",
    "RECEIPT_PIPELINE_WHEEL_PREFIX": "s3://receipts-prod/wheels",
}


def test_the_prod_instance_config_is_valid_and_builds_the_gpu_launcher(tmp_path, monkeypatch):
    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    shutil.copy(PROD_YAML, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))

    assert set(config["storage"]) == {"postgres"}
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["start_timeout_seconds"] >= 900
    assert config["run_retries"]["enabled"] and config["run_retries"]["retry_on_asset_or_op_failure"]
    assert config["concurrency"]["pools"]["granularity"] == "run"
    [gpu_limit] = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert (gpu_limit["key"], gpu_limit["value"]) == (tags.GPU, "true")

    launcher_config = config["run_launcher"]
    assert (launcher_config["module"], launcher_config["class"]) == ("receipt_pipeline.launcher", "EC2GpuRunLauncher")
    processed = process_config(EC2GpuRunLauncher.config_type(), launcher_config["config"])
    assert processed.success, processed.errors
    launcher = EC2GpuRunLauncher.from_config_value(None, processed.value)
    assert launcher.spec.ami == PROD_ENV["RECEIPT_PIPELINE_GPU_AMI"] and launcher.spec.market == "spot"
    assert launcher.spec.instance_types == ("g5.xlarge", "g6.xlarge", "g4dn.xlarge")
    environment = launcher.worker_environment()
    assert environment["RECEIPT_PIPELINE_DEPLOYMENT"] == "prod" and environment["RECEIPTS_TABLE"] == "receipts"
    assert "DAGSTER_PG_PASSWORD" not in environment  # fetched by name on the instance
    assert launcher.spec.security_group_ids == ("sg-0123",)
    # the stack's secrets, by the names it gives them
    assert (
        launcher.secrets
        == stack.secret_references("prod")
        == {
            "DAGSTER_PG_PASSWORD": "secretsmanager:receipt-pipeline/prod/dagster-pg-password",
            "RECEIPT_PIPELINE_OPTUNA_STORAGE": "secretsmanager:receipt-pipeline/prod/optuna-storage",
        }
    )


def test_every_value_the_prod_instance_reads_is_an_output_or_a_secret_of_the_stack_and_none_is_a_placeholder():
    text = PROD_YAML.read_text()
    settings = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    read = set(re.findall(r"\{env: ([A-Z0-9_]+)\}", settings))
    copied = {entry.partition("=")[0] for entry in yaml.safe_load(text)["run_launcher"]["config"]["env_vars"]}
    from_stack = set(stack.environment("s", dict.fromkeys(stack.OUTPUT_VARIABLES, "v"))) | set(stack.SECRETS)
    assert read | copied <= from_stack
    assert set(PROD_ENV) == from_stack - {"RECEIPT_PIPELINE_DEPLOYMENT", "RECEIPT_PIPELINE_OPTUNA_STORAGE"}
    assert not re.search(r"REPLACE|CHANGE-?ME|TODO|xxx", text, re.IGNORECASE)


def test_the_training_asset_is_in_the_gpu_pool():
    assets_def = training.layoutlm_checkpoint
    assert assets_def.node_def.pool == training.GPU_POOL


def test_a_sweep_trial_run_launched_by_the_prod_instance_gets_the_optuna_storage_as_a_secret(tmp_path, monkeypatch):
    import sys

    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test, instance_for_test

    from receipt_pipeline.launcher.user_data import read_run_spec

    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    shutil.copy(PROD_YAML, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    pointer = ModuleCodePointer("receipt_pipeline.definitions", "defs", working_directory=str(PROD_YAML.parents[2]))
    origin = JobPythonOrigin("__ASSET_JOB", RepositoryPythonOrigin(sys.executable, pointer))

    # the prod launcher as deploy/prod/dagster.yaml configures it, on a throwaway instance's storage
    with instance_for_test(overrides={"run_launcher": config["run_launcher"]}) as instance:
        run = create_run_for_test(
            instance,
            job_name="__ASSET_JOB",
            asset_selection={dg.AssetKey("sweep_trial")},
            tags={"dagster/partition": "layoutlm-000"},
            job_code_origin=origin,
        )
        launcher = instance.run_launcher
        assert launcher.is_gpu_run(run)
        spec = read_run_spec(launcher.render_user_data(run))

    # sweep_trial cannot open its study without it; a reference the bootstrap fetches, never the URL itself
    assert spec["secrets"]["RECEIPT_PIPELINE_OPTUNA_STORAGE"] == "secretsmanager:receipt-pipeline/prod/optuna-storage"
    assert "RECEIPT_PIPELINE_OPTUNA_STORAGE" not in spec["env"]
    assert spec["env"]["RECEIPT_PIPELINE_DEPLOYMENT"] == "prod"
    assert launcher.deployment == "prod"
