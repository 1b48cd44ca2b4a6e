"""No GPU instance outlives its run: a sensor terminates instances whose run has ended or is unknown."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from receipt_pipeline.core import aws
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.launcher import ec2, tags


def orphaned_instances(instance: dg.DagsterInstance, live: dict[str, str]) -> dict[str, str]:
    """Instance id -> why it should end, for instances whose run has finished or is not in this instance."""
    run_ids = sorted(set(live.values()))
    if not run_ids:  # an empty run_ids filter would match every run
        return {}
    runs = {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}
    orphans = {}
    for instance_id, run_id in live.items():
        run = runs.get(run_id)
        if run is None:
            orphans[instance_id] = f"run {run_id} is not known to this Dagster instance"
        elif run.status in FINISHED_STATUSES:
            orphans[instance_id] = f"run {run_id} has ended ({run.status.value})"
    return orphans


def build_reaper_sensor(settings: DeploymentSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="terminate_gpu_instances_of_ended_runs",
        minimum_interval_seconds=120,
        # on where GPU runs are launched; the local deployment's emulator has no instances of its own
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.deployment == "prod"
        else dg.DefaultSensorStatus.STOPPED,
        description="Terminates EC2 instances tagged with a Dagster run that has ended (or that this instance "
        "does not know), so no GPU instance outlives its run.",
    )
    def terminate_gpu_instances_of_ended_runs(context: dg.SensorEvaluationContext):
        client = aws.client("ec2", max_attempts=5)
        live = ec2.live_instances_by_tag(client, tags.INSTANCE_RUN_ID)
        orphans = orphaned_instances(context.instance, live)
        for instance_id, why in sorted(orphans.items()):
            ec2.terminate_instance(client, instance_id)
            context.log.warning(f"terminated {instance_id}: {why}")
        return dg.SkipReason(f"{len(live)} GPU instances live, {len(orphans)} terminated")

    return terminate_gpu_instances_of_ended_runs
