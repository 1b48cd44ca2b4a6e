"""No GPU instance outlives its run: a sensor terminates this deployment's instances whose run has ended or
is unknown, and never another deployment's."""

from __future__ import annotations

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.settings import DeploymentSettings
from receipt_pipeline.launcher import ec2, tags
from receipt_pipeline.launcher.run_launcher import EC2GpuRunLauncher


class ReaperError(ExplainedError, RuntimeError):
    """Some instances that should have ended could not be terminated; the message names each and why."""


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
        elif run.is_finished:
            orphans[instance_id] = f"run {run_id} has ended ({run.status.value})"
    return orphans


def reap(instance: dg.DagsterInstance, client, deployment: str, log) -> str:
    """Terminates ``deployment``'s instances whose run has ended or is unknown; what happened, in a sentence.

    A termination that EC2 refuses (or that fails) does not stop the others: each is logged, and once
    every orphan has been tried, :class:`ReaperError` names those still running."""
    live = ec2.live_instances_by_tag(client, tags.INSTANCE_RUN_ID, where={tags.INSTANCE_DEPLOYMENT: deployment})
    orphans = orphaned_instances(instance, live)
    failed = {}
    for instance_id, why in sorted(orphans.items()):
        try:
            ec2.terminate_instance(client, instance_id)
        except (ClientError, BotoCoreError) as error:
            failed[instance_id] = f"{why}, but terminating it failed: {error}"
            log.error(f"could not terminate {instance_id}: {failed[instance_id]}")
            continue
        log.warning(f"terminated {instance_id}: {why}")
    summary = f"{len(live)} GPU instances of deployment {deployment!r} live, {len(orphans) - len(failed)} terminated"
    if failed:
        raise ReaperError(
            f"{summary}; {len(failed)} could not be terminated: "
            + "; ".join(f"{instance_id} ({why})" for instance_id, why in sorted(failed.items()))
        )
    return summary


def build_reaper_sensor(settings: DeploymentSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="terminate_gpu_instances_of_ended_runs",
        minimum_interval_seconds=120,
        # on where GPU runs are launched; the local deployment's emulator has no instances of its own
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.deployment == "prod"
        else dg.DefaultSensorStatus.STOPPED,
        description="Terminates EC2 instances of this deployment (the run launcher's `deployment` tag) whose "
        "Dagster run has ended or is unknown to this instance, so no GPU instance outlives its run; another "
        "deployment's instances in the same account are left alone.",
    )
    def terminate_gpu_instances_of_ended_runs(context: dg.SensorEvaluationContext):
        launcher = context.instance.run_launcher
        if not isinstance(launcher, EC2GpuRunLauncher):
            return dg.SkipReason(
                f"the run launcher is {type(launcher).__name__}, not EC2GpuRunLauncher: this deployment starts "
                "no GPU instances"
            )
        # the launcher's own client: its region is where the instances are
        return dg.SkipReason(reap(context.instance, launcher.ec2_client, launcher.deployment, context.log))

    return terminate_gpu_instances_of_ended_runs
