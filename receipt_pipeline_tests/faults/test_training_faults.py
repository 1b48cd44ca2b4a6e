"""Training faults: repeated SIGTERMs, SIGKILL inside a checkpoint write, S3 failing during a sync.

A changed label list is refused on resume:
core/test_training.py::test_a_checkpoint_with_another_label_list_is_refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from receipt_pipeline.core import bio, storage, training
from receipt_pipeline.core.checkpoint_store import (
    COMPLETE_MARKER,
    CheckpointSync,
    checkpoint_dirs,
    complete_remote_checkpoints,
    restore_latest,
)
from receipt_pipeline.core.training import TrainingInterrupted, train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.aws_faults import FaultProxy, _Answer
from receipt_pipeline_tests.training_data import build_manifest, sroie_frame, sroie_subset

CHECKPOINT_INTERVAL = 6
# real SROIE receipts, enough steps for the validation F1 to leave zero
LONG_ENOUGH = dict(
    max_steps=42,
    eval_steps=CHECKPOINT_INTERVAL,
    per_device_batch_size=4,
    gradient_accumulation_steps=1,
    learning_rate=2e-4,
    warmup_ratio=0.0,
    early_stopping_patience=50,
    seed=11,
)


@pytest.fixture(scope="module")
def sroie_manifest(shared_sroie_dir, module_tmp):
    folder = sroie_subset(shared_sroie_dir, module_tmp("sroie"), receipts=60)
    manifest, _ = build_manifest(
        [sroie_frame(folder)], module_tmp("windows") / "w", bio.SplitOptions(entity_share_target=0)
    )
    return manifest


def _complete_steps(run: Path) -> list[int]:
    return [int(c.name.split("-")[-1]) for c in checkpoint_dirs(run) if (c / COMPLETE_MARKER).is_file()]


def _sigterm_once_past(run: Path, step: int, stop: threading.Event) -> threading.Thread:
    """SIGTERM to this process a moment after a complete checkpoint beyond ``step`` appears: mid-interval."""

    def watch() -> None:
        while not stop.is_set():
            if any(s > step for s in _complete_steps(run)):
                time.sleep(1.0)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_three_sigterms_in_a_row_each_resume_and_the_run_ends_at_the_uninterrupted_f1(sroie_manifest, tmp_path):
    options = TrainingOptions(**LONG_ENOUGH)
    uninterrupted = train(sroie_manifest, tmp_path / "uninterrupted", options)

    run = tmp_path / "interrupted"
    stopped_at = [0]
    for _ in range(3):
        stop = threading.Event()
        watcher = _sigterm_once_past(run, stopped_at[-1], stop)
        try:
            with pytest.raises(TrainingInterrupted, match=r"SIGTERM at step (\d+)") as interrupted:
                train(sroie_manifest, run, options)
        finally:
            stop.set()
            watcher.join()
        step = _step_of(interrupted.value)
        # the step in progress is finished and saved, so less than one checkpoint interval is ever lost:
        # here none, the newest complete checkpoint is the step the signal stopped
        assert max(_complete_steps(run)) == step
        assert step > stopped_at[-1]
        stopped_at.append(step)
    finished = train(sroie_manifest, run, options)

    assert finished.resumed_from == str(run / "checkpoints" / f"checkpoint-{stopped_at[-1]}")
    assert finished.steps == uninterrupted.steps == 42
    assert uninterrupted.best_f1 > 0.05, "F1 must leave zero for the comparison to mean anything"
    # within half a point of F1
    assert abs(finished.best_f1 - uninterrupted.best_f1) <= 0.005, (finished.best_f1, uninterrupted.best_f1)


def _step_of(error: TrainingInterrupted) -> int:
    return int(str(error).split("at step ")[1].split(";")[0])


KILLER = """
import json, os, signal, sys
from pathlib import Path
from receipt_pipeline.core import checkpoint_store, training, training_options

manifest_path, run_dir, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
write_marker = checkpoint_store.mark_complete

def write_marker_or_die(folder, payload):
    if folder.name == f"checkpoint-{kill_at}":
        weights = folder / training.WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the write, cut short
        os.kill(os.getpid(), signal.SIGKILL)
    write_marker(folder, payload)

checkpoint_store.mark_complete = write_marker_or_die
options = training_options.TrainingOptions(**json.loads(sys.argv[4]))
training.train(json.loads(Path(manifest_path).read_text()), run_dir, options)
"""


def test_sigkill_inside_a_checkpoint_write_resumes_from_the_previous_complete_checkpoint(sroie_manifest, tmp_path):
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(sroie_manifest))
    run = tmp_path / "run"
    options = {**LONG_ENOUGH, "max_steps": 12}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(manifest_path), str(run), "12", json.dumps(options)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _complete_steps(run) == [6]
    assert (run / "checkpoints" / "checkpoint-12").is_dir()  # half-written, unmarked

    result = train(sroie_manifest, run, TrainingOptions(**options))

    assert result.resumed_from == str(run / "checkpoints" / "checkpoint-6")
    assert result.steps == 12 and _complete_steps(run)[-1] == 12
    assert {"removed_incomplete_checkpoints": ["checkpoint-12"]} in result.evaluations


class S3FaultProxy(FaultProxy):
    """Also fails S3 uploads: every other PUT of an object whose key contains ``flaky``, and every PUT of
    one whose key ends with ``refused`` (more often than the client retries)."""

    def __init__(self, flaky: str, refused: str) -> None:
        super().__init__()
        self.flaky, self.refused = flaky, refused
        self.puts = 0
        self.failed_puts: list[str] = []

    def answer(self, method, path, headers, body):
        if method == "PUT" and ("/" + self.flaky) in path:
            with self._lock:
                self.puts += 1
                fail = self.puts % 2 == 1 or path.split("?")[0].endswith(self.refused)
                if fail:
                    self.failed_puts.append(path.split("?")[0])
            if fail:
                document = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                return _Answer(503, [("Content-Type", "application/xml")], document)
        return super().answer(method, path, headers, body)


def test_s3_failing_during_a_sync_is_retried_and_an_upload_that_never_finishes_is_not_marked_complete(
    sroie_manifest, tmp_path, artifacts_bucket, monkeypatch
):
    run_uri = f"s3://{artifacts_bucket}/runs/flaky"
    emulator = os.environ["AWS_ENDPOINT_URL"]
    with S3FaultProxy(flaky=f"{artifacts_bucket}/runs/flaky/checkpoint-", refused="checkpoint-12/COMPLETE") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        options = TrainingOptions(**{**LONG_ENOUGH, "max_steps": 12})
        with pytest.raises(Exception, match="SlowDown|503|reduce your request rate"):
            train(sroie_manifest, tmp_path / "run", options, sync=CheckpointSync(run_uri))
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator)

    # every other upload failed and was retried: checkpoint 6 arrived whole, marker last
    assert any("checkpoint-6/" in put for put in proxy.failed_puts)
    complete = complete_remote_checkpoints(run_uri)
    assert sorted(complete) == [6]
    assert storage.exists(f"{run_uri}/checkpoint-12/model.safetensors")  # uploaded, but never marked
    restored = restore_latest(run_uri, tmp_path / "fresh")
    assert restored.name == "checkpoint-6"
    local = (tmp_path / "run" / "checkpoints" / "checkpoint-6" / training.WEIGHTS_FILE).read_bytes()
    assert (restored / training.WEIGHTS_FILE).read_bytes() == local
