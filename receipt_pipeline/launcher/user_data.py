"""The user data of a GPU run's instance: a readable shell script (``user_data.sh``) around a JSON run spec.

The run spec is everything the bootstrap needs: the worker's ``dagster.yaml`` (the launching
instance's storage and compute logs, with ``env:`` references left as they are), the environment,
the names of the secrets to fetch, and the serialised ``dagster api execute_run`` arguments.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from importlib import resources
from string import Template

import yaml

from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.launcher import no_secrets

PACKAGE = "receipt_pipeline"
# EC2 refuses user data over 16 KiB (before base64)
MAX_USER_DATA_BYTES = 16 * 1024
VENV_BIN = "/opt/receipt-pipeline/bin"
_SPEC = re.compile(r"<<'RUN_SPEC'\n(.*?)\nRUN_SPEC\n", re.DOTALL)


class UserDataError(ExplainedError, ValueError):
    pass


def install_commands(version: str, wheel_prefix: str | None = None, index_url: str | None = None) -> str:
    """Shell lines installing the project at ``version``: a wheel under an s3:// prefix, or the package
    pinned from an index."""
    if wheel_prefix:
        wheel = f"{PACKAGE}-{version}-py3-none-any.whl"
        source = f"{wheel_prefix.rstrip('/')}/{wheel}"
        return "\n".join(
            [
                f"aws s3 cp {shlex.quote(source)} /tmp/{wheel}",
                f"{VENV_BIN}/pip install --quiet /tmp/{wheel}",
            ]
        )
    index = f" --index-url {shlex.quote(index_url)}" if index_url else ""
    return f"{VENV_BIN}/pip install --quiet{index} {shlex.quote(f'{PACKAGE}=={version}')}"


def render(run_id: str, version: str, spec: Mapping, install: str) -> str:
    template = Template(resources.files("receipt_pipeline.launcher").joinpath("user_data.sh").read_text())
    text = template.substitute(
        run_id=run_id, version=version, run_spec=json.dumps(spec, indent=2, sort_keys=True), install_commands=install
    )
    kind = no_secrets.secret_kind(text)
    if kind:  # the last net: whatever put it there, a secret value never reaches EC2
        raise UserDataError(f"user data for run {run_id} holds what looks like {kind}; {no_secrets.HOW}")
    size = len(text.encode())
    if size > MAX_USER_DATA_BYTES:
        raise UserDataError(f"user data for run {run_id} is {size} bytes; EC2 takes at most {MAX_USER_DATA_BYTES}")
    return text


def read_run_spec(user_data: str) -> dict:
    """The run spec embedded in rendered user data."""
    found = _SPEC.search(user_data)
    if not found:
        raise UserDataError("no RUN_SPEC block in the user data")
    return json.loads(found.group(1))


def worker_dagster_yaml(instance_ref) -> str:
    """The run worker's dagster.yaml: the launching instance's storage, artifact storage and compute logs.

    Config values are copied as written, so ``{env: NAME}`` stays a reference that the worker resolves
    from its own environment, where the bootstrap put the fetched secrets. A literal secret there (a
    password, a URL with one) is refused."""

    def section(data) -> dict:
        return {"module": data.module_name, "class": data.class_name, "config": yaml.safe_load(data.config_yaml) or {}}

    config: dict = {"telemetry": {"enabled": False}}
    if instance_ref.storage_data is not None:
        config["storage"] = {"custom": section(instance_ref.storage_data)}
    else:
        config["run_storage"] = section(instance_ref.run_storage_data)
        config["event_log_storage"] = section(instance_ref.event_storage_data)
        config["schedule_storage"] = section(instance_ref.schedule_storage_data)
    config["local_artifact_storage"] = section(instance_ref.local_artifact_storage_data)
    config["compute_logs"] = section(instance_ref.compute_logs_data)
    no_secrets.check_config(config, "the Dagster instance config copied into GPU instances' user data")
    return yaml.safe_dump(config, sort_keys=False)
