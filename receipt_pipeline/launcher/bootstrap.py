"""What a GPU run's instance runs once the project is installed (see ``user_data.sh``).

    python -m receipt_pipeline.launcher.bootstrap RUN_SPEC_JSON [--dagster-home DIR]

It writes the worker's ``dagster.yaml``, fetches the secrets named in the spec from SSM Parameter Store
(``ssm:NAME``) or Secrets Manager (``secretsmanager:NAME``) into the worker's environment only, runs
``dagster api execute_run`` in its own process group, and watches the instance metadata (IMDSv2) for a
spot interruption notice: on one, the worker's group gets SIGTERM, so the trainer saves and syncs a
checkpoint within the two minutes' warning. It exits with the worker's exit code; the user data then
powers the machine off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from receipt_pipeline.core.settings import environment, variables

# the SDKs' own override of the metadata endpoint, honoured here too (tests point it at a local server)
IMDS_ENDPOINT_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600


def log(message: str) -> None:
    print(f"[receipt-pipeline bootstrap] {message}", flush=True)


def fetch_secrets(names: Mapping[str, str]) -> dict[str, str]:
    """Environment variable -> secret value, each fetched by name; values are never logged."""
    from receipt_pipeline.core import aws

    values = {}
    for variable, reference in names.items():
        service, _, name = reference.partition(":")
        if service == "ssm":
            values[variable] = aws.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        elif service == "secretsmanager":
            values[variable] = aws.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"]
        else:
            raise ValueError(f"secret {variable}: {reference!r} is neither ssm:NAME nor secretsmanager:NAME")
        log(f"fetched {variable} from {service}:{name}")
    return values


class SpotNoticeWatcher:
    """Polls ``/latest/meta-data/spot/instance-action`` (404 until AWS schedules an interruption)."""

    def __init__(self, endpoint: str | None = None, timeout: float = 2.0) -> None:
        self.endpoint = (endpoint or environment().AWS_EC2_METADATA_SERVICE_ENDPOINT or IMDS_ENDPOINT).rstrip("/")
        self.timeout = timeout
        self._token: str | None = None

    def _fetch_token(self) -> str:
        request = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode()

    def notice(self) -> dict | None:
        """The interruption notice, or None when there is none (or the metadata service did not answer)."""
        try:
            self._token = self._token or self._fetch_token()
            request = urllib.request.Request(
                f"{self.endpoint}/latest/meta-data/spot/instance-action",
                headers={"X-aws-ec2-metadata-token": self._token},
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode() or "{}")
        except urllib.error.HTTPError as error:
            if error.code == 401:  # the token expired
                self._token = None
            return None
        except (urllib.error.URLError, OSError, ValueError):
            return None


def run_worker(spec: Mapping, dagster_home: Path) -> int:
    dagster_home.mkdir(parents=True, exist_ok=True)
    staging = dagster_home / ".dagster.yaml.partial"
    staging.write_text(spec["dagster_yaml"])
    os.replace(staging, dagster_home / "dagster.yaml")
    env = {**variables(), **spec.get("env", {}), "DAGSTER_HOME": str(dagster_home)}
    env.update(fetch_secrets(spec.get("secrets", {})))
    env["DAGSTER_EXECUTE_RUN_ARGS"] = spec["execute_run_args"]
    log(f"run {spec['run_id']}: starting dagster api execute_run")
    worker = subprocess.Popen([sys.executable, "-m", "dagster", "api", "execute_run"], env=env, start_new_session=True)

    watcher = SpotNoticeWatcher()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(float(spec.get("spot_poll_seconds", 5))):
            notice = watcher.notice()
            if notice is not None:
                log(f"spot interruption notice {notice}: SIGTERM to the run worker so it checkpoints")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGTERM)
                return

    threading.Thread(target=watch, name="spot-notice", daemon=True).start()

    def forward(signum, frame):  # the machine is shutting down: the worker gets the same notice
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    code = worker.wait()
    done.set()
    log(f"run {spec['run_id']}: run worker exited with {code}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m receipt_pipeline.launcher.bootstrap")
    parser.add_argument("run_spec", type=Path)
    parser.add_argument("--dagster-home", type=Path, help="default: the spec's dagster_home")
    args = parser.parse_args(argv)
    spec = json.loads(args.run_spec.read_text())
    return run_worker(spec, args.dagster_home or Path(spec["dagster_home"]))


if __name__ == "__main__":
    sys.exit(main())
