"""Training on every GPU of an instance: ``torchrun`` starts one process per GPU, each runs
:func:`training.train` on its share of every batch, and DDP averages the gradients.

The parent (the Dagster step) writes the job (windows manifest, options, sync target) next to the run
folder, starts ``torchrun --standalone`` and waits; the first process writes the result as JSON, which
the parent returns as a :class:`TrainingResult`. A signal sent to the parent (a spot notice) is passed
on, so every process saves the same checkpoint and the run can resume. On CPU the processes talk
through gloo, which is how the tests run two of them.

    python -m torch.distributed.run --standalone --nproc_per_node N -m receipt_pipeline.core.distributed JOB
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from receipt_pipeline.core.training import (
    TrainingError,
    TrainingInterrupted,
    TrainingResult,
    is_main_process,
    train,
)
from receipt_pipeline.core.training_options import TrainingOptions

JOB_FILE = "distributed_job.json"
RESULT_FILE = "distributed_result.json"


def processes_per_node(requested: int | None = None) -> int:
    """``requested``, else one process per visible GPU (one process without a GPU)."""
    if requested:
        return requested
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def torchrun_command(job: Path, processes: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", __name__, str(job),
    ]  # fmt: skip


def train_distributed(
    manifest: dict,
    run_dir: str | Path,
    options: TrainingOptions,
    processes: int,
    *,
    sync_uri: str | None = None,
) -> TrainingResult:
    """:func:`training.train` in ``processes`` processes under torchrun; the same folder layout and result."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job, result_path = run_dir / JOB_FILE, run_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    job.write_text(json.dumps({"manifest": manifest, "options": asdict(options), "sync_uri": sync_uri}))
    process = subprocess.Popen(torchrun_command(job, processes))

    def pass_on(signum, frame):
        process.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, pass_on)
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    outcome = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if outcome.get("interrupted"):
        raise TrainingInterrupted(outcome["error"])
    if code != 0 or "result" not in outcome:
        cause = outcome.get("error") or "no result written; the processes' log is above"
        raise TrainingError(f"distributed training in {processes} processes failed (torchrun exit {code}): {cause}")
    return TrainingResult(**outcome["result"])


def _write_result(path: Path, payload: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload))
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    """One torchrun process."""
    from receipt_pipeline.core.checkpoint_store import CheckpointSync

    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    main_process = is_main_process()
    sync = CheckpointSync(job["sync_uri"]) if job["sync_uri"] and main_process else None
    result_path = job_path.parent / RESULT_FILE
    try:
        result = train(job["manifest"], job_path.parent, TrainingOptions(**job["options"]), sync=sync)
    except TrainingInterrupted as error:
        if main_process:
            _write_result(result_path, {"interrupted": True, "error": str(error)})
        return 3
    except Exception as error:
        if main_process:
            _write_result(result_path, {"error": f"{type(error).__name__}: {error}"})
        raise
    if main_process:
        _write_result(result_path, {"result": asdict(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
