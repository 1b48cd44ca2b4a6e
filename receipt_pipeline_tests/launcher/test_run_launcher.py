"""EC2GpuRunLauncher through a real Dagster instance and code server, against the emulator's EC2 and S3.

Training runs start an instance; an agent plays that instance on this machine (see ``instance_agent``).
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.launcher import WorkerStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test, poll_for_finished_run
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import consume_new_runs_for_automatic_reexecution
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from receipt_pipeline.core import aws, storage
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import gpu_instances, ingestion, retraining, training_data
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline.launcher import ec2, tags
from receipt_pipeline.launcher.user_data import read_run_spec
from receipt_pipeline_tests.conftest import delete_bucket, seeded_receipts_table
from receipt_pipeline_tests.launcher.emulated_ec2 import (
    DEEP_LEARNING_AMI,
    create_network,
    instance_ids_for_run,
    interrupt_spot_instance,
)
from receipt_pipeline_tests.launcher.instance_agent import InstanceAgent
from receipt_pipeline_tests.training_data import QUICK_SPLIT, sroie_subset

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "launcher-tests"
SECRET_PARAMETER = "/receipt-pipeline/test/worker-secret"
SECRET_VALUE = f"never-in-user-data-{uuid.uuid4().hex}"
UPSTREAM = [
    ingestion.raw_receipt_words,
    ingestion.sroie_receipts,
    training_data.bio_receipt_split,
    training_data.windowed_tensors,
]


def _training_config(max_steps: int, eval_steps: int) -> dict:
    return {"ops": {"layoutlm_checkpoint": {"config": {"max_steps": max_steps, "eval_steps": eval_steps}}}}


@pytest.fixture(scope="module")
def deployment(aws_emulator, shared_sroie_dir, module_tmp):
    """The prod deployment on the emulator: its environment, its settings, a network for GPU instances."""
    root = module_tmp("launcher")
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.client("ssm").put_parameter(Name=SECRET_PARAMETER, Value=SECRET_VALUE, Type="SecureString", Overwrite=True)
    network = create_network()
    with seeded_receipts_table(receipts=20, seed=5) as table, pytest.MonkeyPatch.context() as patch:
        env = {
            "RECEIPT_PIPELINE_DEPLOYMENT": "prod",
            "RECEIPTS_TABLE": table,
            "RECEIPT_PIPELINE_BUCKET": bucket,
            "SROIE_DIR": str(sroie_subset(shared_sroie_dir, root / "sroie", receipts=40)),
            "RECEIPT_PIPELINE_BASE_MODEL": "compact",
            "RECEIPT_PIPELINE_SCRATCH": str(root / "scratch"),
            "HF_HUB_OFFLINE": "1",
        }
        for name, value in env.items():
            patch.setenv(name, value)
        yield {"env": env, "bucket": bucket, "network": network, "root": root}
    delete_bucket(bucket)


@pytest.fixture(scope="module")
def dagster_instance(deployment):
    network = deployment["network"]
    launcher = {
        "module": "receipt_pipeline.launcher",
        "class": "EC2GpuRunLauncher",
        "config": {
            "deployment": DEPLOYMENT,
            "ami": DEEP_LEARNING_AMI,
            "subnet_id": network.subnet_id,
            "security_group_ids": [network.security_group_id],
            "instance_profile": network.instance_profile,
            "max_spot_price": "0.90",
            "wheel_prefix": f"s3://{deployment['bucket']}/wheels",
            "worker_env": deployment["env"],
            "secrets": {"RECEIPT_PIPELINE_TEST_SECRET": f"ssm:{SECRET_PARAMETER}"},
            "spot_poll_seconds": 1,
            "extra_tags": {"team": "receipts"},
        },
    }
    overrides = {"run_launcher": launcher, "run_retries": {"enabled": True, "max_retries": 1}}
    with instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture(scope="module")
def workspace(dagster_instance):
    target = ModuleTarget(
        module_name="receipt_pipeline.definitions",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name="receipt_pipeline",
    )
    with create_test_daemon_workspace_context(target, dagster_instance) as context:
        yield context


@pytest.fixture(scope="module")
def upstream(deployment, dagster_instance):
    """The training data in S3, materialised where Dagster runs."""
    settings = DeploymentSettings.from_env()
    result = dg.materialize(
        UPSTREAM, resources=resources_for(settings), instance=dagster_instance, run_config={"ops": QUICK_SPLIT}
    )
    assert result.success
    return settings


def _create_run(
    instance,
    workspace,
    assets: list[str] | None,
    run_config: dict | None = None,
    run_tags: dict | None = None,
    job: str = "__ASSET_JOB",
):
    """A run of ``assets`` of the implicit asset job, or (assets None) of the whole of ``job``."""
    location = workspace.create_request_context().get_code_location("receipt_pipeline")
    remote_job = location.get_repository("__repository__").get_full_job(job)
    definitions = build_definitions()
    job_def = definitions.resolve_implicit_global_asset_job_def() if assets else definitions.resolve_job_def(job)
    return instance.create_run_for_job(
        job_def=job_def,
        asset_selection={dg.AssetKey(asset) for asset in assets} if assets else None,
        run_config=run_config,
        tags=run_tags,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
    )


def _launch(instance, workspace, run):
    instance.launch_run(run.run_id, workspace.create_request_context())
    return instance.get_run_by_id(run.run_id)


def _mark_started(instance, run) -> None:
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name), run_id=run.run_id
    )


def test_a_training_run_starts_a_spot_gpu_instance_and_a_data_run_does_not(deployment, dagster_instance, workspace):
    run = _launch(dagster_instance, workspace, _create_run(dagster_instance, workspace, ["layoutlm_checkpoint"]))
    instance_id = run.tags[tags.INSTANCE_ID]
    assert instance_ids_for_run(run.run_id) == [instance_id]
    assert (run.tags[tags.RECORDED_INSTANCE_TYPE], run.tags[tags.RECORDED_MARKET]) == ("g5.xlarge", "spot")
    assert run.tags[tags.ZONE] == deployment["network"].zone and float(run.tags[tags.HOURLY_PRICE]) > 0
    assert any(
        "Launched EC2 instance " + instance_id in (event.message or "")
        for event in dagster_instance.all_logs(run.run_id)
    )

    client = aws.client("ec2")
    [reservation] = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    described = reservation["Instances"][0]
    assert described["InstanceLifecycle"] == "spot" and described["MetadataOptions"]["HttpTokens"] == "required"
    assert {t["Key"]: t["Value"] for t in described["Tags"]}[tags.INSTANCE_RUN_ID] == run.run_id
    [volume] = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    assert volume["Encrypted"]
    raw = client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    user_data = base64.b64decode(raw).decode()
    assert SECRET_VALUE not in user_data
    assert f"s3://{deployment['bucket']}/wheels/receipt_pipeline-" in user_data and "shutdown -h now" in user_data
    spec = read_run_spec(user_data)
    assert spec["run_id"] == run.run_id and run.run_id in spec["execute_run_args"]
    assert spec["secrets"] == {"RECEIPT_PIPELINE_TEST_SECRET": f"ssm:{SECRET_PARAMETER}"}
    assert "storage" in spec["dagster_yaml"] and "compute_logs" in spec["dagster_yaml"]
    launcher = dagster_instance.run_launcher
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    # a run's tags choose its type and market
    tagged = _create_run(
        dagster_instance,
        workspace,
        ["layoutlm_checkpoint"],
        run_tags={tags.INSTANCE_TYPE: "g4dn.xlarge", tags.MARKET: "on-demand"},
    )
    tagged = _launch(dagster_instance, workspace, tagged)
    assert (tagged.tags[tags.RECORDED_INSTANCE_TYPE], tagged.tags[tags.RECORDED_MARKET]) == ("g4dn.xlarge", "on-demand")

    # a data run goes to the default launcher: it runs here and starts no instance
    data_run = _launch(dagster_instance, workspace, _create_run(dagster_instance, workspace, ["sroie_receipts"]))
    data_run = poll_for_finished_run(dagster_instance, data_run.run_id, timeout=180)
    assert data_run.status == dg.DagsterRunStatus.SUCCESS
    assert tags.INSTANCE_ID not in data_run.tags and instance_ids_for_run(data_run.run_id) == []
    assert launcher.check_run_worker_health(data_run).status == WorkerStatus.RUNNING  # not watched here

    # terminate() ends the instance and marks the run canceling
    for launched in (run, tagged):
        assert launcher.terminate(launched.run_id) is True
        assert ec2.instance_status(client, launched.tags[tags.INSTANCE_ID]).state == "terminated"
        assert dagster_instance.get_run_by_id(launched.run_id).status == dg.DagsterRunStatus.CANCELING


def test_a_data_refresh_runs_here_and_the_training_it_triggers_gets_a_gpu_instance(
    deployment, dagster_instance, workspace
):
    data_run = _create_run(
        dagster_instance, workspace, None, job="refresh_training_data", run_tags={retraining.TRIGGER_TAG: "schedule"}
    )
    data_run = poll_for_finished_run(dagster_instance, _launch(dagster_instance, workspace, data_run).run_id, 240)
    assert data_run.status == dg.DagsterRunStatus.SUCCESS
    assert tags.INSTANCE_ID not in data_run.tags and instance_ids_for_run(data_run.run_id) == []
    observed = dagster_instance.get_latest_data_version_record(dg.AssetKey("receipts_table"))
    assert observed is not None and observed.run_id == data_run.run_id

    [success] = dagster_instance.all_logs(data_run.run_id, of_type=DagsterEventType.RUN_SUCCESS)
    context = dg.build_run_status_sensor_context(
        sensor_name=retraining.train_after_data_refresh.name,
        dagster_event=success.dagster_event,
        dagster_instance=dagster_instance,
        dagster_run=data_run,
    )
    request = retraining.train_after_data_refresh(context)
    assert request.run_key == data_run.run_id
    assert request.tags == {retraining.DATA_RUN_TAG: data_run.run_id, retraining.TRIGGER_TAG: "schedule"}

    training = _create_run(dagster_instance, workspace, None, job="train_evaluate_promote", run_tags=request.tags)
    training = _launch(dagster_instance, workspace, training)
    assert instance_ids_for_run(training.run_id) == [training.tags[tags.INSTANCE_ID]]
    assert dagster_instance.run_launcher.terminate(training.run_id) is True


def test_each_sweep_trial_run_gets_its_own_gpu_instance(dagster_instance, workspace):
    dagster_instance.add_dynamic_partitions("sweep_trials", ["gpu-000", "gpu-001"])
    runs = [
        _launch(
            dagster_instance,
            workspace,
            _create_run(dagster_instance, workspace, ["sweep_trial"], run_tags={"dagster/partition": partition}),
        )
        for partition in ("gpu-000", "gpu-001")
    ]
    instances = [instance_ids_for_run(run.run_id) for run in runs]
    assert all(len(ids) == 1 for ids in instances) and instances[0] != instances[1]
    for run in runs:
        assert dagster_instance.run_launcher.terminate(run.run_id) is True


def test_run_monitoring_fails_a_started_run_whose_spot_instance_was_reclaimed(dagster_instance, workspace):
    run = _launch(dagster_instance, workspace, _create_run(dagster_instance, workspace, ["layoutlm_checkpoint"]))
    _mark_started(dagster_instance, run)
    record = dagster_instance.get_run_record_by_id(run.run_id)
    monitor_started_run(dagster_instance, workspace.create_request_context(), record, logging.getLogger("test"))
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # healthy: untouched

    interrupt_spot_instance(run.tags[tags.INSTANCE_ID])
    record = dagster_instance.get_run_record_by_id(run.run_id)
    monitor_started_run(dagster_instance, workspace.create_request_context(), record, logging.getLogger("test"))
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    messages = " ".join(event.message or "" for event in dagster_instance.all_logs(run.run_id))
    assert "spot interruption" in messages and run.tags[tags.INSTANCE_ID] in messages


def test_the_agent_runs_a_training_run_and_the_checkpoint_lands_in_s3(
    deployment, dagster_instance, workspace, upstream, tmp_path
):
    run = _create_run(dagster_instance, workspace, ["layoutlm_checkpoint"], _training_config(4, 2))
    run = _launch(dagster_instance, workspace, run)
    agent = InstanceAgent(run.tags[tags.INSTANCE_ID], tmp_path / "instance").boot()
    assert agent.wait(timeout=300) == 0, agent.log()
    agent.power_off()

    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS, agent.log()
    assert "fetched RECEIPT_PIPELINE_TEST_SECRET" in agent.log() and SECRET_VALUE not in agent.log()
    bucket = deployment["bucket"]
    assert storage.exists(f"s3://{bucket}/runs/{run.run_id}/best/COMPLETE")
    assert storage.exists(f"s3://{bucket}/runs/{run.run_id}/best/model.safetensors")
    event = dagster_instance.get_latest_materialization_event(dg.AssetKey("layoutlm_checkpoint"))
    metadata = event.asset_materialization.metadata
    assert metadata["path"].value == f"s3://{bucket}/runs/{run.run_id}/best"
    assert metadata["ec2_instance_id"].value == run.tags[tags.INSTANCE_ID]
    assert metadata["gpu_cost_usd"].value > 0


def test_a_spot_interruption_checkpoints_and_the_retry_resumes_from_s3(
    deployment, dagster_instance, workspace, upstream, tmp_path
):
    steps = 16
    run = _create_run(dagster_instance, workspace, ["layoutlm_checkpoint"], _training_config(steps, 4))
    run = _launch(dagster_instance, workspace, run)
    agent = InstanceAgent(run.tags[tags.INSTANCE_ID], tmp_path / "first").boot()
    first_checkpoint = f"s3://{deployment['bucket']}/runs/{run.run_id}/checkpoint-4/COMPLETE"
    _wait_for(lambda: storage.exists(first_checkpoint) or agent.process.poll() is not None, 240, agent)
    agent.metadata.give_spot_notice()
    assert agent.wait(timeout=240) != 0, agent.log()
    interrupt_spot_instance(agent.instance_id)
    assert "spot interruption notice" in agent.log()

    interrupted = dagster_instance.get_run_by_id(run.run_id)
    assert interrupted.status == dg.DagsterRunStatus.FAILURE
    health = dagster_instance.run_launcher.check_run_worker_health(interrupted)
    assert health.status == WorkerStatus.FAILED and "spot interruption" in health.msg
    saved = synced_checkpoint_steps(deployment["bucket"], run.run_id)
    assert saved and max(saved) < steps, saved

    records = dagster_instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))
    list(consume_new_runs_for_automatic_reexecution(workspace, records, logging.getLogger("test")))
    [retry] = dagster_instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
    assert retry.root_run_id == run.run_id
    if retry.status == dg.DagsterRunStatus.QUEUED:  # what the queue daemon does next
        retry = _launch(dagster_instance, workspace, retry)
    assert retry.tags[tags.INSTANCE_ID] != run.tags[tags.INSTANCE_ID]  # its own instance, not the parent's tag
    agent = InstanceAgent(retry.tags[tags.INSTANCE_ID], tmp_path / "second").boot()
    assert agent.wait(timeout=300) == 0, agent.log()
    agent.power_off()

    assert dagster_instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.SUCCESS, agent.log()
    metadata = dagster_instance.get_latest_materialization_event(
        dg.AssetKey("layoutlm_checkpoint")
    ).asset_materialization.metadata
    resumed_at = int(metadata["resumed_from"].value.rsplit("-", 1)[-1])
    assert resumed_at == max(saved) and metadata["steps"].value == steps
    assert steps - resumed_at < steps  # the second attempt trained only what was left
    assert storage.exists(f"s3://{deployment['bucket']}/runs/{run.run_id}/best/COMPLETE")


def synced_checkpoint_steps(bucket: str, run_id: str) -> list[int]:
    """Steps of the complete checkpoints synced to S3 for a run."""
    listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/checkpoint-")
    return sorted(
        int(obj["Key"].split("/")[2].split("-")[1])
        for obj in listed.get("Contents", [])
        if obj["Key"].endswith("/COMPLETE")
    )


def _wait_for(condition, timeout: float, agent: InstanceAgent) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; bootstrap log:\n{agent.log()}")
        time.sleep(0.5)


def test_the_sensor_terminates_instances_whose_run_ended_or_is_unknown(deployment, dagster_instance, workspace):
    client = aws.client("ec2")
    network = deployment["network"]
    spec = ec2.InstanceSpec(ami=DEEP_LEARNING_AMI, subnet_id=network.subnet_id)
    live_run = _launch(dagster_instance, workspace, _create_run(dagster_instance, workspace, ["layoutlm_checkpoint"]))
    ended_run = _create_run(dagster_instance, workspace, ["sroie_receipts"])
    dagster_instance.report_run_canceled(ended_run)
    ours = {tags.INSTANCE_DEPLOYMENT: DEPLOYMENT}
    ended = ec2.start_instance(client, spec, "", {tags.INSTANCE_RUN_ID: ended_run.run_id, **ours})
    unknown = ec2.start_instance(client, spec, "", {tags.INSTANCE_RUN_ID: "no-such-run", **ours})

    settings = DeploymentSettings.from_env()
    sensor = gpu_instances.build_reaper_sensor(settings)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # prod reaps from the start
    result = sensor(dg.build_sensor_context(instance=dagster_instance))
    assert isinstance(result, dg.SkipReason)

    assert ec2.instance_status(client, ended.instance_id).state == "terminated"
    assert ec2.instance_status(client, unknown.instance_id).state == "terminated"
    assert ec2.instance_status(client, live_run.tags[tags.INSTANCE_ID]).alive
    dagster_instance.run_launcher.terminate(live_run.run_id)
