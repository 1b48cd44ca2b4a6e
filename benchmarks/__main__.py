"""`make bench`: runs benchmarks and rewrites their sections of BENCHMARKS.md.

python -m benchmarks [--write] [NAME ...]

Without names it runs the default set (windowing, training-throughput, table-read, demo, gpu); the others
(read-strategies, seed-stream, sroie-training, sroie-training-earlier-overrides, split-strategies,
export-inference, table-fields, synthetic-coverage, users-line-items, synthetic-to-real) on request. Each prints
a Markdown section stamped with the machine and the date; with
``--write`` (as `make bench` runs it) each replaces its own ``<!-- bench:NAME -->`` block in BENCHMARKS.md,
and the findings written around the blocks stay.
"""

from __future__ import annotations

import filecmp
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPEATS = 3
REPEATS_AT_LEAST = 5  # what make bench quotes a median of


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
    from receipt_pipeline.cli import start_emulator_process, stop_process
    from receipt_pipeline.core import local_aws
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


TABLE_READS = {
    "per-image queries (GSI3 index pass, then one Query per image, 8 threads)": ("gsi3", 8),
    "parallel Scan, 4 segments": ("scan", 4),
    "one Scan": ("scan", 1),
}


def table_read(receipts: int = 1000, runs: int = 1) -> str:
    """About 100,000 words read from the emulator three ways; the words read must be identical."""
    from receipt_pipeline.cli import start_emulator_process, stop_process
    from receipt_pipeline.core import local_aws, word_table
    from receipt_pipeline.core.dynamo_reader import ReadOptions, read_receipt_words
    from receipt_pipeline.core.synthetic import seed_synthetic

    emulator, _ = start_emulator_process(_free_port())
    rows, hashes = [], set()
    try:
        table = "bench-table-read"
        local_aws.provision(table, "bench-bucket")
        started = time.perf_counter()
        written = seed_synthetic(table, receipts, seed=11, unlabelled_share=0.0)
        seeding = time.perf_counter() - started
        for name, (strategy, parallelism) in TABLE_READS.items():
            seconds, result = [], None
            for _ in range(runs):
                started = time.perf_counter()
                result = read_receipt_words(ReadOptions(table=table, strategy=strategy, read_parallelism=parallelism))
                seconds.append(time.perf_counter() - started)
            hashes.add(word_table.content_hash(result.frame))
            images = result.frame["image_id"].nunique()
            rows.append(
                f"| {name} | {len(result.frame):,} | {result.receipts:,} ({images:,} images) | {result.requests:,} "
                f"| {result.items_read:,} | {statistics.median(seconds):.0f} "
                f"| {', '.join(f'{s:.0f}' for s in seconds)} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        stop_process(emulator)
    if len(hashes) != 1:
        raise RuntimeError("the three reads returned different words")
    header = (
        f"| read | words | receipts | requests | items evaluated (billed) | median s on the emulator ({runs} runs) "
        "| runs s |\n|---|---|---|---|---|---|---|"
    )
    return (
        f"### Reading the table: {receipts:,} synthetic receipts from the emulator\n\n"
        f"`python -m benchmarks table-read`. {written.items:,} items (images, receipts, "
        f"lines, words, labels) seeded in {seeding:.0f} s, every receipt labelled; the three reads return the "
        "same words (their content hashes are compared).\n\n" + header + "\n" + "\n".join(rows)
    )


# ----------------------------------------------------------------------------------------- seed stream


def _seed_worker(receipts: int, endpoint: str) -> None:
    from receipt_pipeline.core import local_aws
    from receipt_pipeline.core.synthetic import seed_synthetic

    os.environ.update({**local_aws.EMULATOR_ENV, "AWS_ENDPOINT_URL": endpoint})
    started = time.perf_counter()
    stats = seed_synthetic("null", receipts, seed=3)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"items": stats.items, "retried": stats.retried_items, "seconds": seconds, "peak_mib": peak_mib}))


def seed_stream(sizes: tuple[int, ...] = (1000, 4000)) -> str:
    """Peak memory of `seed-synthetic` must not grow with the number of receipts."""
    from benchmarks.null_dynamodb import NullDynamoDB

    rows = []
    for receipts in sizes:
        with NullDynamoDB() as sink:
            worker = subprocess.run(
                [sys.executable, "-m", "benchmarks", "seed-worker", str(receipts), sink.url],
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


# ------------------------------------------------------------------------------------------ windowing

WINDOW_COLUMNS = ["key", "split", "words", "boxes", "tags"]  # what windowed_tensors reads
WINDOW_REPEATS = 5


def _synthetic_split(receipts: int, chunk: int = 1000, seed: int = 500):
    """A split table of ``receipts`` distinct synthetic receipts, every one labelled, built ``chunk`` receipts
    at a time. The same rows as one build_split over all of them: the split hashes the receipt key and
    down-sampling is off; the label list (the union) and the content hash are set over the whole table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from receipt_pipeline.core import bio, word_table
    from receipt_pipeline.core.dynamo_reader import ReadOptions, assemble
    from receipt_pipeline.core.synthetic import iter_receipt_items

    tables, labels = [], set()
    for index, start in enumerate(range(0, receipts, chunk)):
        items = iter_receipt_items(min(chunk, receipts - start), seed + index, unlabelled_share=0.0)
        partial = assemble(items, ReadOptions(table="bench"))
        table = bio.build_split([word_table.to_frame(partial.columns)], bio.SplitOptions(entity_share_target=0)).table
        labels.update(bio.labels_of(table.schema.metadata))
        tables.append(table.replace_schema_metadata(None))
        print(f"  generated {start + table.num_rows:,}/{receipts:,} receipts", file=sys.stderr, flush=True)
    table = pa.concat_tables(tables).combine_chunks()
    if table.num_rows != receipts or pc.count_distinct(table.column("key")).as_py() != receipts:
        raise RuntimeError(f"expected {receipts:,} distinct labelled receipts, got {table.num_rows:,} rows")
    table = table.replace_schema_metadata({bio.LABELS_METADATA_KEY: ",".join(sorted(labels)).encode()})
    version = bio.content_hash(table)
    return table.replace_schema_metadata({**table.schema.metadata, bio.VERSION_METADATA_KEY: version.encode()})


def _write_copies(table, path: str, copies: int) -> None:
    """``copies`` copies of ``table`` streamed into one parquet file, the key suffixed ``-copyN`` per copy; the
    labels stay, the content hash is derived from the table's and the number of copies (it only names
    the output folder)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from receipt_pipeline.core import bio

    version = hashlib.sha256(f"{bio.version_of(table.schema.metadata)}:copies={copies}".encode()).hexdigest()[:24]
    schema = table.schema.with_metadata({**table.schema.metadata, bio.VERSION_METADATA_KEY: version.encode()})
    keys = table.column("key").to_pylist()
    with pq.ParquetWriter(path, schema) as writer:
        for copy in range(copies):
            suffixed = pa.array([f"{key}-copy{copy}" for key in keys], pa.string())
            writer.write_table(table.set_column(0, "key", suffixed).replace_schema_metadata(schema.metadata))


def _run_windows(path: str, tokenizer, labels: list[str], folder: str, options) -> tuple[float, dict, dict]:
    """The windowed_tensors core path: the split streamed from parquet into write_windows."""
    from receipt_pipeline.core.storage import ParquetArtifact
    from receipt_pipeline.core.windows import write_windows

    started = time.perf_counter()
    batches = ParquetArtifact(path).iter_batches(batch_size=options.batch_receipts, columns=WINDOW_COLUMNS)
    manifest, stats = write_windows(batches, tokenizer, labels, folder, options)
    return time.perf_counter() - started, manifest, stats


def _same_shards(first: str, second: str) -> int:
    """The number of shard files, after checking both folders hold the same names with the same bytes."""
    names = sorted(os.listdir(first))
    if names != sorted(os.listdir(second)):
        raise RuntimeError(f"different shard files: {names} against {sorted(os.listdir(second))}")
    differing = [name for name in names if not filecmp.cmp(f"{first}/{name}", f"{second}/{name}", shallow=False)]
    if differing:
        raise RuntimeError(f"batched and receipt-by-receipt shards differ: {differing}")
    return len(names)


def _windowing_worker(mode: str, path: str, folder: str) -> None:
    """In its own process: only the imports and the tokenizer (``baseline``), or what windowed_tensors does."""
    from receipt_pipeline.core import bio, storage
    from receipt_pipeline.core.base_model import load_tokenizer, tokenizer_fingerprint
    from receipt_pipeline.core.batching import padding_efficiency
    from receipt_pipeline.core.windows import WindowOptions, folder_name

    started = time.perf_counter()
    tokenizer = load_tokenizer("compact")
    result = {"load_seconds": time.perf_counter() - started}
    if mode == "windows":
        options = WindowOptions()
        metadata = storage.ParquetArtifact(path).schema_metadata()
        labels = bio.labels_of(metadata)
        target = storage.join(folder, folder_name(bio.version_of(metadata), tokenizer_fingerprint(tokenizer), options))
        seconds, manifest, stats = _run_windows(path, tokenizer, labels, target, options)
        padding_efficiency(stats["train"].lengths, batch_size=4, max_length=options.max_length)  # compact's
        shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
        result.update(
            seconds=seconds,
            padding_seconds=time.perf_counter() - started - result["load_seconds"] - seconds,
            receipts=sum(s.receipts for s in stats.values()),
            windows=sum(s.windows for s in stats.values()),
            tokens=sum(s.tokens for s in stats.values()),
            shards=len(shards),
            shard_bytes=sum(os.path.getsize(storage.join(target, shard["file"])) for shard in shards),
        )
    result["hwm_mib"] = _hwm_mib()
    print(json.dumps(result))


# A child's ru_maxrss starts at its parent's high-water RSS: subprocess forks (vfork) and exec keeps the
# larger of the two, so a worker spawned from this process, which holds the split and a tokenizer, would
# report this process's peak. A bare launcher in between has a small high-water mark of its own, and its
# RUSAGE_CHILDREN covers the one worker it runs.
_LAUNCHER = (
    "import json, resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True)\n"
    "print(json.dumps({'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def _hwm_mib() -> float:
    """This process's own high-water RSS (VmHWM), which exec resets, unlike ru_maxrss."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _child_peak(args: list[str]) -> tuple[dict, float, float]:
    """Run a worker through the launcher: its JSON line, its peak RSS in MiB and the wall seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "benchmarks", *args]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    peak_mib = json.loads(lines[-1])["peak_kib"] / 1024
    return json.loads(lines[-2]), peak_mib, time.perf_counter() - started


def windowing(receipts: int = 10_000, copies: int = 10) -> str:
    """write_windows: batched tokenisation against receipt by receipt, and peak memory on a large split."""
    import pyarrow.parquet as pq

    from receipt_pipeline.core import bio
    from receipt_pipeline.core.base_model import load_tokenizer
    from receipt_pipeline.core.windows import WindowOptions

    with tempfile.TemporaryDirectory(prefix="bench-windowing-") as scratch:
        table = _synthetic_split(receipts)
        small = f"{scratch}/split-{receipts}.parquet"
        pq.write_table(table, small)  # as ArtifactIOManager stores bio_receipt_split
        tokenizer = load_tokenizer("compact")
        labels = bio.labels_of(pq.read_schema(small).metadata)

        modes = {
            "batched (batch_receipts=256)": WindowOptions(),
            "receipt by receipt (batch_receipts=1)": WindowOptions(batch_receipts=1),
        }
        seconds: dict[str, list[float]] = {name: [] for name in modes}
        totals: dict[str, tuple[int, int]] = {}
        shard_files = 0
        for run in range(WINDOW_REPEATS):
            folders = {}
            for name, options in modes.items():
                folders[name] = f"{scratch}/run{run}-{options.batch_receipts}"
                took, manifest, stats = _run_windows(small, tokenizer, labels, folders[name], options)
                seconds[name].append(took)
                totals[name] = (sum(s.windows for s in stats.values()), sum(s.tokens for s in stats.values()))
                print(f"  run {run + 1}: {name}: {took:.2f} s", file=sys.stderr, flush=True)
            shard_files = _same_shards(*folders.values())
            for folder in folders.values():
                for name in os.listdir(folder):
                    os.remove(f"{folder}/{name}")
        if len(set(totals.values())) != 1:
            raise RuntimeError(f"batched and receipt-by-receipt windows differ: {totals}")
        speed = {name: receipts / statistics.median(runs) for name, runs in seconds.items()}
        speed_rows = []
        for name, runs in seconds.items():
            windows, tokens = totals[name]
            speed_rows.append(
                f"| {name} | {receipts:,} | {windows:,} | {tokens:,} | {statistics.median(runs):.2f} "
                f"| {speed[name]:,.0f} | {', '.join(f'{s:.2f}' for s in runs)} |"
            )
            print(speed_rows[-1], file=sys.stderr, flush=True)
        batched, single = speed.values()

        large = f"{scratch}/split-{receipts * copies}.parquet"
        _write_copies(table, large, copies)
        row_groups = pq.ParquetFile(large).num_row_groups
        large_mib = os.path.getsize(large) / 2**20
        del table
        memory_rows = []
        for label, mode in (("imports + tokenizer only (baseline)", "baseline"), ("windowed_tensors path", "windows")):
            result, peak_mib, wall = _child_peak(["windowing-worker", mode, large, f"{scratch}/windows"])
            cells = [f"{peak_mib:.0f} ({result['hwm_mib']:.0f})", f"{wall:.1f}"]
            if mode == "baseline":
                cells = ["-", *cells, "-", "-", "-", "-"]
            else:
                shards = f"{result['shards']} ({result['shard_bytes'] / 2**20:,.0f} MiB)"
                cells = [f"{result['receipts']:,}", *cells, f"{result['seconds']:.1f}", f"{result['windows']:,}"]
                cells += [f"{result['tokens']:,}", shards]
            memory_rows.append(f"| {label} | " + " | ".join(cells) + " |")
            print(memory_rows[-1], file=sys.stderr, flush=True)

    speed_header = (
        f"| tokenisation | receipts | windows | tokens | median s ({WINDOW_REPEATS} runs) | receipts/s | runs s |\n"
        "|---|---|---|---|---|---|---|"
    )
    memory_header = (
        "| process | receipts | peak RSS MiB (VmHWM) | process wall s | write_windows s | windows | tokens "
        "| shards written |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    threads = os.environ.get("TOKENIZERS_PARALLELISM", "unset")
    return (
        f"### `windowed_tensors`: write_windows on synthetic receipts (`compact` tokenizer, "
        f"TOKENIZERS_PARALLELISM {threads})\n\n"
        f"{receipts:,} distinct synthetic receipts (every one labelled), one parquet file as the IO manager "
        f"writes it, streamed through `ParquetArtifact.iter_batches` into `write_windows`; the two settings "
        f"alternate within each run.\n\n"
        + speed_header + "\n" + "\n".join(speed_rows)
        + f"\n\nBatched / receipt by receipt: {batched / single:.2f}x receipts/s. The shards are byte-identical "
        f"({shard_files} files compared in each of the {WINDOW_REPEATS} runs).\n\n"
        f"Peak memory on {receipts * copies:,} receipts: the {receipts:,} receipts above written {copies} times, "
        f"the key suffixed `-copyN` per copy, streamed with `ParquetWriter` ({large_mib:,.0f} MiB, {row_groups} "
        f"row groups); each row a fresh process, its peak RSS the `RUSAGE_CHILDREN` of a bare launcher "
        f"that runs only it (the worker's own `VmHWM` in brackets, as a cross-check). The "
        f"windowed_tensors path reads the schema metadata, writes the shards with `WindowOptions()` and computes "
        f"the padding efficiency, as the asset does.\n\n"
        + memory_header + "\n" + "\n".join(memory_rows)
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- demo

REPOSITORY = Path(__file__).resolve().parents[1]


DEMO_SECONDS_TARGET = 240  # issue 19: within 4 minutes after install
DEMO_FIELD_F1_TARGET = 0.6


def demo(runs: int = 5) -> str:
    """`make demo` after install, from an empty data folder and Dagster home each time."""
    seconds, field_f1s, tails = [], [], []
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
            env = {
                **os.environ,
                "RECEIPT_PIPELINE_DATA_DIR": f"{scratch}/data",
                "DAGSTER_HOME": f"{scratch}/dagster_home",
                "LOCAL_AWS_PORT": str(_free_port()),
            }
            started = time.perf_counter()
            finished = subprocess.run(["make", "demo"], cwd=REPOSITORY, env=env, capture_output=True, text=True)
            seconds.append(time.perf_counter() - started)
            if finished.returncode != 0 or "Report: " not in finished.stdout:
                raise RuntimeError(f"make demo failed (exit {finished.returncode}):\n{finished.stdout[-3000:]}")
            tails.append(next(line for line in finished.stdout.splitlines() if line.startswith("Report: ")))
            field_f1s.append(float(tails[-1].split("SROIE field F1 ", 1)[1].split(";")[0]))
            print(f"  demo run {run + 1}: {seconds[-1]:.0f} s; {tails[-1]}", file=sys.stderr, flush=True)
    median, median_f1 = statistics.median(seconds), statistics.median(field_f1s)
    time_verdict = "met" if median <= DEMO_SECONDS_TARGET else "not met"
    f1_verdict = "met" if median_f1 >= DEMO_FIELD_F1_TARGET else "not met"
    return (
        "### End to end: `make demo` after install\n\n"
        f"{runs} runs, each from an empty data folder, Dagster home and emulator (seeding included); the "
        "training step takes every default and stops at the local deployment's budget (2.5 minutes).\n\n"
        "| runs | median s | runs s | median SROIE field F1 | runs field F1 | targets |\n|---|---|---|---|---|---|\n"
        f"| {runs} | **{median:.0f}** | {', '.join(f'{s:.0f}' for s in seconds)} | **{median_f1:.3f}** | "
        f"{', '.join(f'{f:.3f}' for f in field_f1s)} | at most {DEMO_SECONDS_TARGET} s: {time_verdict}; field F1 at "
        f"least {DEMO_FIELD_F1_TARGET}: {f1_verdict} |\n\n"
        f"The last run's report: {tails[-1].split(' (', 1)[-1].split(';')[0]}."
    )


def gpu() -> str | None:
    """The GPU benchmark's Markdown; None where there is no CUDA device (the recorded results stay)."""
    import torch

    from benchmarks import gpu as module

    if not torch.cuda.is_available():
        return None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        module.main(["--out", scratch])
        return "### GPU: layoutlm-base training step\n\n" + Path(scratch, "gpu_benchmark.md").read_text()


def training_throughput() -> str:
    from benchmarks import training_throughput as module

    return module.markdown(REPEATS_AT_LEAST)


def sroie_training() -> str:
    from benchmarks import sroie_training as module

    # what a user gets: every training and split default, a 20-minute budget
    return module.markdown(20.0)


def sroie_training_earlier_overrides() -> str:
    from benchmarks import sroie_training as module

    # what this benchmark once set itself, beside the defaults for comparison: epochs fitted to the budget,
    # patience equal to them, down-sampling off
    epochs = int(20.0 * 60 // module.SECONDS_PER_EPOCH)
    return module.markdown(20.0, {"entity_share_target": 0.0}, epochs=epochs, early_stopping_patience=epochs)


def split_strategies() -> str:
    from benchmarks import split_strategies as module

    return module.markdown(4.0)


def table_fields() -> str:
    from benchmarks import table_fields as module

    # the extraction's ceiling on the synthetic table and SROIE, then a model trained with every default
    return module.markdown(5.0)


def synthetic_coverage() -> str:
    from benchmarks import synthetic_coverage as module

    # every default of seed-synthetic: what share of its receipts print each feature of real US receipts
    return module.markdown()


def synthetic_to_real() -> str:
    from benchmarks import synthetic_to_real as module

    # the users' recipe: every default, 400 seed-synthetic receipts, 10 minutes; read on their real item zones
    return module.markdown(10.0)


def users_line_items() -> str:
    from benchmarks import users_line_items as module

    # the line-item assembly on the users' published real geometry, from true tags
    return module.markdown()


def export_inference() -> str:
    from benchmarks import export_inference as module

    # the compact model trained a few minutes, then served by PyTorch and by its ONNX exports
    return module.markdown()


BENCHMARKS = {
    "windowing": windowing,
    "training-throughput": training_throughput,
    "table-read": table_read,
    "demo": demo,
    "gpu": gpu,
    "read-strategies": read_strategies,
    "seed-stream": seed_stream,
    "sroie-training": sroie_training,
    "sroie-training-earlier-overrides": sroie_training_earlier_overrides,
    "split-strategies": split_strategies,
    "export-inference": export_inference,
    "table-fields": table_fields,
    "synthetic-coverage": synthetic_coverage,
    "users-line-items": users_line_items,
    "synthetic-to-real": synthetic_to_real,
}
# what `make bench` runs unless told otherwise (BENCH="..."): the issue-8 list; the rest on request
DEFAULT = ["windowing", "training-throughput", "table-read", "demo", "gpu"]
DOCUMENT = REPOSITORY / "BENCHMARKS.md"


def write_section(document: Path, name: str, body: str) -> None:
    """Replace the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (appended if absent);
    the text around the blocks (findings, explanations) is kept."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = document.read_text() if document.is_file() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    partial = document.with_suffix(".md.partial")
    partial.write_text(text)
    os.replace(partial, document)


def main(argv: list[str]) -> None:
    if argv[:1] == ["seed-worker"]:
        _seed_worker(int(argv[1]), argv[2])
        return
    if argv[:1] == ["windowing-worker"]:
        _windowing_worker(argv[1], argv[2], argv[3])
        return
    write = argv[:1] == ["--write"]
    chosen = argv[1:] if write else argv
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown}; choose from {', '.join(BENCHMARKS)}")
    for name in chosen or DEFAULT:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        section = BENCHMARKS[name]()
        if section is None:
            print(f"{name}: not measured on this machine; BENCHMARKS.md keeps what it has", file=sys.stderr)
            if not write or f"<!-- bench:{name} -->" in (DOCUMENT.read_text() if DOCUMENT.is_file() else ""):
                continue
            section = f"### {name}\n\nNot measured: no CUDA device on the machine that ran `make bench`."
        stamp = f"_Measured {date.today().isoformat()} on {_machine()}; load average {load:.1f} at the start._"
        section = section.replace("\n\n", f"\n\n{stamp}\n\n", 1)
        print(section + "\n", flush=True)
        if write:
            write_section(DOCUMENT, name, section)
            print(f"{name}: written to {DOCUMENT}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
