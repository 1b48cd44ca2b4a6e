#!/bin/bash
# Dagster run $run_id on an EC2 GPU instance, rendered by receipt_pipeline.launcher.EC2GpuRunLauncher.
# It holds no secrets: the bootstrap fetches each secret by name (the spec's "secrets") when it starts.
set -uo pipefail
exec >>/var/log/receipt-pipeline-run.log 2>&1
# However the run ends, the machine powers off; its shutdown behaviour (terminate) ends the bill.
trap 'shutdown -h now' EXIT

install -d -m 0700 /etc/receipt-pipeline
cat >/etc/receipt-pipeline/run-spec.json <<'RUN_SPEC'
$run_spec
RUN_SPEC

# The project at the launching code's version ($version). The image's CUDA build of torch is reused.
python3 -m venv --system-site-packages /opt/receipt-pipeline
$install_commands

/opt/receipt-pipeline/bin/python -m receipt_pipeline.launcher.bootstrap /etc/receipt-pipeline/run-spec.json
