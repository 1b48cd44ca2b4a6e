"""``EC2GpuRunLauncher``: runs that train start their own EC2 GPU instance; every other run is handed to
Dagster's default launcher, so data assets never wait for a GPU box.

Modelled on ``dagster_aws.ecs.EcsRunLauncher``: the run worker is ``dagster api execute_run`` on the
instance, its id and price are recorded as run tags, run monitoring asks ``check_run_worker_health``,
and ``terminate`` ends the instance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from importlib.metadata import version as package_version

import boto3
from dagster import AssetKey, Field, IntSource, Noneable, Permissive, StringSource
from dagster import _check as check
from dagster._core.events import EngineEventData
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

from receipt_pipeline.core import aws
from receipt_pipeline.core.settings import variable
from receipt_pipeline.launcher import ec2, no_secrets, tags, user_data

DEFAULT_GPU_ASSETS = ("layoutlm_checkpoint", "sweep_trial")


class EC2GpuRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        *,
        deployment: str,
        ami: str,
        region: str | None = None,
        instance_types: list[str] | None = None,
        market: str = ec2.SPOT,
        max_spot_price: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: list[str] | None = None,
        instance_profile: str | None = None,
        root_volume_gb: int = 200,
        root_device_name: str = "/dev/sda1",
        extra_tags: Mapping[str, str] | None = None,
        on_demand_prices: Mapping[str, float] | None = None,
        gpu_assets: list[str] | None = None,
        wheel_prefix: str | None = None,
        package_index_url: str | None = None,
        worker_env: Mapping[str, str] | None = None,
        env_vars: list[str] | None = None,
        secrets: Mapping[str, str] | None = None,
        dagster_home: str = "/opt/dagster/dagster_home",
        spot_poll_seconds: int = 5,
    ) -> None:
        self._inst_data = inst_data
        if not deployment or not deployment.strip():
            raise ValueError("deployment is empty: name this deployment (e.g. prod, staging) in the launcher config")
        self.deployment = deployment
        spec_kwargs = {"on_demand_prices": dict(on_demand_prices)} if on_demand_prices else {}
        self.spec = ec2.InstanceSpec(
            ami=ami,
            instance_types=tuple(instance_types or ec2.InstanceSpec.instance_types),
            market=market,
            max_spot_price=max_spot_price,
            subnet_id=subnet_id,
            security_group_ids=tuple(security_group_ids or ()),
            instance_profile=instance_profile,
            root_volume_gb=root_volume_gb,
            root_device_name=root_device_name,
            extra_tags=dict(extra_tags or {}),
            **spec_kwargs,
        )
        self.region = region
        self.gpu_assets = {AssetKey.from_user_string(key) for key in (gpu_assets or DEFAULT_GPU_ASSETS)}
        self.wheel_prefix = wheel_prefix
        self.package_index_url = package_index_url
        self.worker_env = dict(worker_env or {})
        self.env_vars = list(env_vars or [])
        # values go into the user data and the tags as they are: none may be a secret
        no_secrets.check_mapping(self.worker_env, "worker_env variable")
        no_secrets.check_mapping(self.spec.extra_tags, "extra_tags tag")
        for entry in self.env_vars:
            name, has_value, value = entry.partition("=")
            no_secrets.check_name(name, "env_vars variable")
            if has_value:
                no_secrets.check_value(name, value, "env_vars variable")
        for name, reference in (secrets or {}).items():
            if not reference.startswith(("ssm:", "secretsmanager:")):
                raise ValueError(f"secret {name}: {reference!r} is neither ssm:NAME nor secretsmanager:NAME")
        self.secrets = dict(secrets or {})
        self.dagster_home = dagster_home
        self.spot_poll_seconds = spot_poll_seconds
        self._default = DefaultRunLauncher()
        self._ec2 = None
        super().__init__()

    # -------------------------------------------------------------------------------- configuration

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {
            "deployment": Field(
                StringSource,
                description="This deployment's name (e.g. prod, staging), tagged on its instances: the reaper sensor "
                "ends only instances of its own deployment, so deployments can share an AWS account.",
            ),
            "ami": Field(StringSource, description="A GPU deep-learning image."),
            "region": Field(Noneable(StringSource), is_required=False, default_value=None),
            "instance_types": Field([str], is_required=False, description="In order of preference."),
            "market": Field(str, is_required=False, default_value=ec2.SPOT, description="spot or on-demand"),
            "max_spot_price": Field(Noneable(str), is_required=False, default_value=None),
            "subnet_id": Field(Noneable(StringSource), is_required=False, default_value=None),
            "security_group_ids": Field([StringSource], is_required=False),
            "instance_profile": Field(Noneable(StringSource), is_required=False, default_value=None),
            "root_volume_gb": Field(IntSource, is_required=False, default_value=200),
            "root_device_name": Field(str, is_required=False, default_value="/dev/sda1"),
            "extra_tags": Field(Permissive(), is_required=False),
            "on_demand_prices": Field(Permissive(), is_required=False, description="USD an hour by type."),
            "gpu_assets": Field([str], is_required=False, description="Runs materialising these get a GPU."),
            "wheel_prefix": Field(Noneable(StringSource), is_required=False, default_value=None),
            "package_index_url": Field(Noneable(StringSource), is_required=False, default_value=None),
            "worker_env": Field(Permissive(), is_required=False, description="Environment of the run worker."),
            "env_vars": Field(
                [str],
                is_required=False,
                description="NAME copies the launching process's value into the worker's environment; "
                "NAME=VALUE sets one. Not for secrets: they go in `secrets`, fetched by name on the instance.",
            ),
            "secrets": Field(
                Permissive(), is_required=False, description="Env var -> ssm:NAME or secretsmanager:NAME."
            ),
            "dagster_home": Field(str, is_required=False, default_value="/opt/dagster/dagster_home"),
            "spot_poll_seconds": Field(int, is_required=False, default_value=5),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        self._default.register_instance(instance)

    @property
    def ec2_client(self):
        if self._ec2 is None:
            session = boto3.session.Session(region_name=self.region) if self.region else aws.session()
            self._ec2 = session.client("ec2", config=aws.client_config(max_attempts=5))
        return self._ec2

    # -------------------------------------------------------------------------------- which runs

    def run_asset_keys(self, run) -> set[AssetKey]:
        """The assets a run will materialise: from its execution plan (a retry from failure runs only the
        failed steps), else from its asset selection."""
        if run.execution_plan_snapshot_id:
            snapshot = self._instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            if snapshot is not None:
                return set(snapshot.asset_selection)
        return set(run.asset_selection or ())

    def is_gpu_run(self, run) -> bool:
        return run.tags.get(tags.GPU) == "true" or bool(self.run_asset_keys(run) & self.gpu_assets)

    # -------------------------------------------------------------------------------- launch

    def worker_environment(self) -> dict[str, str]:
        env = dict(self.worker_env)
        for entry in self.env_vars:
            name, has_value, value = entry.partition("=")
            if has_value:
                env[name] = value
            elif (value := variable(name)) is not None:
                no_secrets.check_value(name, value, "env_vars variable")
                env[name] = value
        return env

    def worker_spec(self, run) -> dict:
        args = ExecuteRunArgs(
            job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=None, set_exit_code_on_failure=True
        )
        return {
            "run_id": run.run_id,
            "dagster_home": self.dagster_home,
            "dagster_yaml": user_data.worker_dagster_yaml(self._instance.get_ref()),
            "env": self.worker_environment(),
            "secrets": self.secrets,
            "execute_run_args": serialize_value(args),
            "spot_poll_seconds": self.spot_poll_seconds,
        }

    def render_user_data(self, run) -> str:
        version = package_version(user_data.PACKAGE)
        install = user_data.install_commands(version, self.wheel_prefix, self.package_index_url)
        return user_data.render(run.run_id, version, self.worker_spec(run), install)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not self.is_gpu_run(run):
            self._default.launch_run(context)
            return
        check.invariant(run.job_code_origin is not None, f"run {run.run_id} has no job code origin")
        instance_tags = {
            "Name": f"dagster-run-{run.run_id[:8]}",
            tags.INSTANCE_RUN_ID: run.run_id,
            tags.INSTANCE_DEPLOYMENT: self.deployment,
            "dagster-job": run.job_name,
        }
        started = ec2.start_instance(
            self.ec2_client,
            self.spec,
            self.render_user_data(run),
            instance_tags,
            instance_type=run.tags.get(tags.INSTANCE_TYPE),
            market=run.tags.get(tags.MARKET),
        )
        try:
            self._record_instance(run, started)
        except Exception as error:
            # an instance no run knows would run until the reaper sensor found it
            raise ec2.end_after_failed_launch(
                self.ec2_client, started.instance_id, f"recording it on run {run.run_id}", error
            ) from error

    def _record_instance(self, run, started: ec2.StartedInstance) -> None:
        price = "" if started.hourly_price is None else f"{started.hourly_price:g}"
        # a retry copies its parent's tags: every record is overwritten here
        self._instance.add_run_tags(
            run.run_id,
            {
                tags.INSTANCE_ID: started.instance_id,
                tags.RECORDED_INSTANCE_TYPE: started.instance_type,
                tags.RECORDED_MARKET: started.market,
                tags.ZONE: started.zone,
                tags.HOURLY_PRICE: price,
                tags.LAUNCH_TIME: started.launch_time.astimezone(dt.UTC).isoformat(),
            },
        )
        refused = f" after {'; '.join(started.refusals)}" if started.refusals else ""
        self._instance.report_engine_event(
            message=(
                f"Launched EC2 instance {started.instance_id} ({started.instance_type}, {started.market}, "
                f"{started.zone or 'zone unknown'}, {('$' + price + '/h') if price else 'price unknown'}){refused}"
            ),
            dagster_run=run,
            engine_event_data=EngineEventData(
                {
                    "instance id": started.instance_id,
                    "instance type": started.instance_type,
                    "market": started.market,
                    "availability zone": started.zone,
                    "hourly price (USD)": price,
                    "refused placements": "; ".join(started.refusals),
                }
            ),
            cls=self.__class__,
        )

    # -------------------------------------------------------------------------------- watch and end

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        instance_id = run.tags.get(tags.INSTANCE_ID)
        if not instance_id:
            # runs handed to the default launcher are not watched here
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not an EC2 run")
        status = ec2.instance_status(self.ec2_client, instance_id)
        if status.alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"{instance_id} is {status.state}")
        if status.spot_interrupted:
            message = f"spot interruption: {instance_id} is {status.state} ({status.reason or status.reason_code})"
        else:
            detail = f" ({status.reason})" if status.reason else ""
            message = f"EC2 instance {instance_id} is {status.state}{detail} while its run was still going"
        return CheckRunHealthResult(WorkerStatus.FAILED, message, run_worker_id=instance_id)

    def get_run_worker_debug_info(self, run, include_container_logs: bool | None = True) -> str | None:
        """What run monitoring adds to a start or cancel timeout: the instance's state (a run whose instance
        stays pending never starts). The sensor terminate_gpu_instances_of_ended_runs then ends the instance."""
        instance_id = run.tags.get(tags.INSTANCE_ID)
        if not instance_id:
            if not self.is_gpu_run(run):
                return self._default.get_run_worker_debug_info(run, include_container_logs)
            return (
                f"no EC2 instance was recorded for run {run.run_id}: its launch did not finish; any instance tagged "
                f"{tags.INSTANCE_RUN_ID}={run.run_id} is terminated by the sensor terminate_gpu_instances_of_ended_runs"
            )
        status = ec2.instance_status(self.ec2_client, instance_id)
        detail = f" ({status.reason})" if status.reason else ""
        return (
            f"EC2 instance {instance_id} is {status.state}{detail}; once the run has failed, the sensor "
            "terminate_gpu_instances_of_ended_runs terminates it"
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        instance_id = run.tags.get(tags.INSTANCE_ID)
        if not instance_id:
            return self._default.terminate(run_id)
        # canceling first, so the worker's interruption reads as a cancellation rather than a failure
        self._instance.report_run_canceling(run)
        ended = ec2.terminate_instance(self.ec2_client, instance_id)
        self._instance.report_engine_event(
            message=f"Terminated EC2 instance {instance_id}" if ended else f"EC2 instance {instance_id} had ended",
            dagster_run=run,
            cls=self.__class__,
        )
        return ended

    def dispose(self) -> None:
        self._default.dispose()

    def join(self, timeout: int = 30) -> None:
        self._default.join(timeout)
