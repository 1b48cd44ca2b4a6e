"""`make bench`: prints a Markdown section for BENCHMARKS.md.

python -m receipt_pipeline_tests.benchmarks [read-strategies] [seed-stream]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from datetime import date

from receipt_pipeline.cli import start_emulator_process, stop_process
from receipt_pipeline.core import local_aws

REPEATS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB, Python {platform.python_version()}"


# ------------------------------------------------------------------------------------- read strategies


def read_strategies(receipts: int = 40) -> str:
    """GSI3 index + per-image queries against a parallel Scan, on two table shapes."""
    from receipt_pipeline.core.dynamo_reader import ReadOptions, read_receipt_words
    from receipt_pipeline.core.synthetic import seed_synthetic

    emulator, _ = start_emulator_process(_free_port())
    rows = []
    try:
        for name, unlabelled_share in (("mostly labelled", 0.1), ("labelled minority", 0.8)):
            table = f"bench-{unlabelled_share}"
            local_aws.provision(table, "bench-bucket")
            seed_synthetic(table, receipts, seed=11, unlabelled_share=unlabelled_share)
            for strategy in ("gsi3", "scan"):
                seconds, result = [], None
                for _ in range(REPEATS):
                    started = time.perf_counter()
                    result = read_receipt_words(ReadOptions(table=table, strategy=strategy, read_parallelism=8))
                    seconds.append(time.perf_counter() - started)
                rows.append(
                    f"| {name} ({result.receipts}/{receipts} receipts labelled) | {strategy} | {result.items_read:,} "
                    f"| {result.requests:,} | {len(result.frame):,} | {statistics.median(seconds):.1f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        stop_process(emulator)
    header = (
        "| table | strategy | items evaluated (billed) | requests | words out | median s on the emulator |\n"
        "|---|---|---|---|---|---|"
    )
    return f"### raw_receipt_words read strategies ({receipts} synthetic receipts per table, {REPEATS} runs)\n\n" + (
        header + "\n" + "\n".join(rows)
    )


# ----------------------------------------------------------------------------------------- seed stream


def _seed_worker(receipts: int, endpoint: str) -> None:
    from receipt_pipeline.core.synthetic import seed_synthetic

    os.environ.update({**local_aws.EMULATOR_ENV, "AWS_ENDPOINT_URL": endpoint})
    started = time.perf_counter()
    stats = seed_synthetic("null", receipts, seed=3)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"items": stats.items, "retried": stats.retried_items, "seconds": seconds, "peak_mib": peak_mib}))


def seed_stream(sizes: tuple[int, ...] = (1000, 4000)) -> str:
    """Peak memory of `seed-synthetic` must not grow with the number of receipts."""
    from receipt_pipeline_tests.benchmarks.null_dynamodb import NullDynamoDB

    rows = []
    for receipts in sizes:
        with NullDynamoDB() as sink:
            worker = subprocess.run(
                [sys.executable, "-m", "receipt_pipeline_tests.benchmarks", "seed-worker", str(receipts), sink.url],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(worker.stdout.strip().splitlines()[-1])
            assert sink.items == result["items"], "the sink received every item exactly once"
        rows.append(
            f"| {receipts:,} | {result['items']:,} | {result['retried']:,} | {result['seconds']:.1f} "
            f"| {result['items'] / result['seconds']:,.0f} | {result['peak_mib']:.0f} |"
        )
    header = (
        "| receipts | items written | items retried (unprocessed) | seconds | items/s | peak RSS MiB |\n"
        "|---|---|---|---|---|---|"
    )
    return (
        "### seed-synthetic streaming into BatchWriteItem (a discarding endpoint)\n\n" + header + "\n" + "\n".join(rows)
    )


BENCHMARKS = {"read-strategies": read_strategies, "seed-stream": seed_stream}


def main(argv: list[str]) -> None:
    if argv[:1] == ["seed-worker"]:
        _seed_worker(int(argv[1]), argv[2])
        return
    chosen = argv or list(BENCHMARKS)
    sections = [f"## {date.today().isoformat()} on {_machine()}"]
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        sections.append(BENCHMARKS[name]())
    print("\n\n".join(sections))


if __name__ == "__main__":
    main(sys.argv[1:])
