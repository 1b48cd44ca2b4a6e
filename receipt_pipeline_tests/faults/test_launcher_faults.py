"""Launcher faults: no GPU capacity, a launch cut short after RunInstances, an instance that never starts, a
daemon killed mid-launch, and twenty launch, terminate and crash cycles, all against the emulator's EC2 over
HTTP; every test ends by asking EC2 (a real DescribeInstances) which instances are still alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from receipt_pipeline.launcher import ec2, tags
from receipt_pipeline_tests.aws_faults import ACTION_FAILURE, CAPACITY_REFUSAL
from receipt_pipeline_tests.faults.conftest import (
    create_gpu_run,
    event_texts,
    launch,
    mark_started,
    monitor,
    reap,
    run_instances_of,
    suite_instances,
)
from receipt_pipeline_tests.launcher.emulated_ec2 import hold_pending, interrupt_spot_instance

ALIVE = set(ec2.LIVE_STATES)
# the launching process dies (SIGKILL, OOM) between RunInstances and recording the instance on the run
KILLED_MID_LAUNCH = """
import os, sys
from dagster import DagsterInstance
from dagster._serdes import deserialize_value

instance = DagsterInstance.from_ref(deserialize_value(sys.argv[1]))
instance.add_run_tags = lambda *args, **kwargs: os._exit(137)
instance.launch_run(sys.argv[2], workspace=None)
"""


def _refuse_every_placement(proxy, launcher) -> None:
    for instance_type, market in ec2.placements(launcher.spec):
        proxy.refuse_capacity(instance_type, market)


def _launch_in_a_process_that_is_killed(instance: dg.DagsterInstance, run) -> None:
    from dagster._serdes import serialize_value

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_LAUNCH, serialize_value(instance.get_ref()), run.run_id],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr[-3000:]


def _alive(instances: dict[str, str]) -> dict[str, str]:
    return {instance_id: state for instance_id, state in instances.items() if state in ALIVE}


def test_capacity_refused_for_every_type_fails_the_run_naming_each_refusal_and_starts_nothing(
    dagster_instance, proxy, suite_id
):
    _refuse_every_placement(proxy, dagster_instance.run_launcher)
    run = create_gpu_run(dagster_instance)
    with pytest.raises(ec2.CapacityError, match="no GPU capacity"):
        launch(dagster_instance, run)

    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    log = event_texts(dagster_instance, run.run_id)
    for instance_type, market in ec2.placements(dagster_instance.run_launcher.spec):
        assert f"{instance_type} {market}: InsufficientInstanceCapacity" in log
    assert proxy.injected[CAPACITY_REFUSAL] == 6
    assert run_instances_of(run.run_id) == {} and suite_instances(suite_id) == {}


@pytest.mark.parametrize("failing_step", ["price lookup", "recording on the run"])
def test_a_launch_that_fails_after_run_instances_terminates_its_instance_at_once(
    dagster_instance, proxy, suite_id, monkeypatch, failing_step
):
    if failing_step == "price lookup":  # a policy without ec2:DescribeSpotPriceHistory, say
        proxy.fail_action("DescribeSpotPriceHistory", "UnauthorizedOperation")
        expected = "looking up its hourly price failed: .*UnauthorizedOperation.*"
    else:  # the run storage is down when the instance id is to be written
        monkeypatch.setattr(
            dagster_instance, "add_run_tags", lambda *a, **k: (_ for _ in ()).throw(OSError("run storage is down"))
        )
        expected = "recording it on run .* failed: run storage is down"
    run = create_gpu_run(dagster_instance)
    with pytest.raises(ec2.LaunchError, match=expected + "; the instance was terminated"):
        launch(dagster_instance, run)

    [(instance_id, state)] = run_instances_of(run.run_id).items()
    assert state == "terminated"  # by the launcher itself, no sensor needed
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert f"EC2 instance {instance_id} was started but" in event_texts(dagster_instance, run.run_id)
    assert suite_instances(suite_id) == {}


def test_an_instance_that_never_starts_fails_its_run_at_the_start_timeout_and_is_then_terminated(
    dagster_instance, suite_id
):
    run = launch(dagster_instance, create_gpu_run(dagster_instance))
    instance_id = run.tags[tags.INSTANCE_ID]
    hold_pending(instance_id)
    assert run.status == dg.DagsterRunStatus.STARTING  # the worker never reports: it never ran

    failed = monitor(dagster_instance, run.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    log = event_texts(dagster_instance, run.run_id)
    assert "taking longer than 1 seconds to start" in log and f"EC2 instance {instance_id} is pending" in log
    assert suite_instances(suite_id) == {instance_id: "pending"}  # until the sensor's next tick

    reap(dagster_instance)
    assert suite_instances(suite_id) == {} and run_instances_of(run.run_id) == {instance_id: "terminated"}


def test_a_daemon_killed_between_run_instances_and_recording_leaves_an_instance_the_timeout_and_sensor_end(
    dagster_instance, suite_id
):
    run = create_gpu_run(dagster_instance)
    _launch_in_a_process_that_is_killed(dagster_instance, run)
    run = dagster_instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.STARTING and tags.INSTANCE_ID not in run.tags
    [(instance_id, state)] = run_instances_of(run.run_id).items()
    assert state == "running"  # nobody knows it but its tag

    failed = monitor(dagster_instance, run.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert "no EC2 instance was recorded for run" in event_texts(dagster_instance, run.run_id)
    reap(dagster_instance)
    assert run_instances_of(run.run_id) == {instance_id: "terminated"} and suite_instances(suite_id) == {}


# ------------------------------------------------------------------------------ twenty cycles


def _cycle_terminated_by_user(instance, run, proxy, monkeypatch):
    run = launch(instance, run)
    assert instance.run_launcher.terminate(run.run_id) is True
    return monitor(instance, run.run_id)  # the worker went with its machine: the cancel timeout ends the run


def _cycle_price_lookup_refused(instance, run, proxy, monkeypatch):
    proxy.fail_action("DescribeSpotPriceHistory", "UnauthorizedOperation")
    with pytest.raises(ec2.LaunchError, match="the instance was terminated"):
        launch(instance, run)


def _cycle_recording_refused(instance, run, proxy, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(instance, "add_run_tags", lambda *a, **k: (_ for _ in ()).throw(OSError("database is locked")))
        with pytest.raises(ec2.LaunchError, match="database is locked; the instance was terminated"):
            launch(instance, run)


def _cycle_never_starts(instance, run, proxy, monkeypatch):
    run = launch(instance, run)
    hold_pending(run.tags[tags.INSTANCE_ID])
    monitor(instance, run.run_id)


def _cycle_worker_crashed_and_machine_stayed_up(instance, run, proxy, monkeypatch):
    run = launch(instance, run)
    mark_started(instance, run)
    instance.report_run_failed(instance.get_run_by_id(run.run_id), "the run worker crashed")


def _cycle_spot_reclaimed(instance, run, proxy, monkeypatch):
    run = launch(instance, run)
    mark_started(instance, run)
    interrupt_spot_instance(run.tags[tags.INSTANCE_ID])
    monitor(instance, run.run_id)


def _cycle_no_capacity(instance, run, proxy, monkeypatch):
    _refuse_every_placement(proxy, instance.run_launcher)
    try:
        with pytest.raises(ec2.CapacityError):
            launch(instance, run)
    finally:
        proxy.restore_capacity()


def _cycle_daemon_killed_mid_launch(instance, run, proxy, monkeypatch):
    _launch_in_a_process_that_is_killed(instance, run)
    monitor(instance, run.run_id)


CYCLES = [
    _cycle_terminated_by_user,
    _cycle_price_lookup_refused,
    _cycle_recording_refused,
    _cycle_never_starts,
    _cycle_worker_crashed_and_machine_stayed_up,
    _cycle_spot_reclaimed,
    _cycle_no_capacity,
    _cycle_daemon_killed_mid_launch,
]


def test_twenty_launch_terminate_and_crash_cycles_leave_no_instance_running(
    dagster_instance, proxy, suite_id, monkeypatch
):
    started = 0
    kinds: Counter[str] = Counter()
    for number in range(20):
        cycle = CYCLES[number % len(CYCLES)]
        kinds[cycle.__name__] += 1
        run = create_gpu_run(dagster_instance, {"cycle": str(number)})
        cycle(dagster_instance, run, proxy, monkeypatch)
        reap(dagster_instance)  # the sensor's tick between cycles

        run = dagster_instance.get_run_by_id(run.run_id)
        assert run.status in FINISHED_STATUSES, f"cycle {number} ({cycle.__name__}): run is {run.status}"
        instances = run_instances_of(run.run_id)
        assert _alive(instances) == {}, f"cycle {number} ({cycle.__name__}) left {instances}"
        started += len(instances)

    assert set(kinds) == {cycle.__name__ for cycle in CYCLES}
    assert started == 20 - kinds["_cycle_no_capacity"]  # one instance a launch, none refused
    assert proxy.injected[ACTION_FAILURE] == kinds["_cycle_price_lookup_refused"]
    everything = suite_instances(suite_id, states=(*ec2.LIVE_STATES, "terminated"))
    assert len(everything) == started and _alive(everything) == {}
