"""A stand-in for the EC2 instance a GPU run starts: it does on this machine what the instance would do.

The agent reads the instance's user data back from the emulator, takes the run spec out of it and runs
the bootstrap's step, ``python -m receipt_pipeline.launcher.bootstrap``, against the same Dagster
instance and the same emulated S3. The install step (a wheel from S3, which this checkout is) is the
one part it skips. A local instance-metadata server (IMDSv2: token, then
``spot/instance-action``) lets a test give the spot interruption notice.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from receipt_pipeline.core import aws
from receipt_pipeline.launcher.bootstrap import IMDS_ENDPOINT_VARIABLE
from receipt_pipeline.launcher.user_data import read_run_spec

TOKEN = "imds-token"


class InstanceMetadata:
    """IMDSv2 for one instance: ``spot/instance-action`` answers 404 until :meth:`give_spot_notice`."""

    def __init__(self) -> None:
        self.notice: dict | None = None
        self.token_requests = 0
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    metadata.token_requests += 1
                    self._send(200, TOKEN)
                else:
                    self._send(400, "")

            def do_GET(self):  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    self._send(401, "")  # IMDSv2 only: a request without the token is refused
                elif self.path == "/latest/meta-data/spot/instance-action" and metadata.notice is not None:
                    self._send(200, json.dumps(metadata.notice))
                else:
                    self._send(404, "")

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="imds", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def give_spot_notice(self) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        self.notice = {"action": "terminate", "time": when}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class InstanceAgent:
    """Plays one instance: started with :meth:`boot`, waited for with :meth:`wait`."""

    def __init__(self, instance_id: str, work_dir: Path) -> None:
        self.instance_id = instance_id
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.metadata = InstanceMetadata()
        self.log_path = work_dir / "bootstrap.log"
        self.process: subprocess.Popen | None = None
        attribute = aws.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        self.user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
        self.spec = read_run_spec(self.user_data)

    def boot(self) -> InstanceAgent:
        spec_path = self.work_dir / "run-spec.json"
        spec_path.write_text(json.dumps(self.spec))
        env = {**os.environ, IMDS_ENDPOINT_VARIABLE: self.metadata.url}
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receipt_pipeline.launcher.bootstrap", str(spec_path)]
                + ["--dagster-home", str(self.work_dir / "dagster_home")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self, timeout: float) -> int:
        """The bootstrap's exit code; then the machine powers off (shutdown behaviour: terminate)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the run worker did not finish in {timeout} s; log:\n{self.log()}") from None
        finally:
            self.metadata.close()
        return code

    def power_off(self) -> None:
        aws.client("ec2").terminate_instances(InstanceIds=[self.instance_id])

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
