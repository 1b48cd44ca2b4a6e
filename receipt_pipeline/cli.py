"""The ``receipt-pipeline`` command: the local AWS emulator, synthetic data, the demo and the dev UI; publishing to
the prod stack and starting its host's services."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import click

from receipt_pipeline.core import local_aws
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.settings import DeploymentSettings, environment, set_variables, variables

DEFAULT_PORT = 5466
# the dev UI runs jobs and reads the artifacts: reachable from this machine only unless asked otherwise
DEFAULT_UI_HOST = "127.0.0.1"
UI_HOST_VARIABLE = "RECEIPT_PIPELINE_UI_HOST"


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _BadArgument(click.ClickException):
    exit_code = 2  # as click's usage errors


class CommandGroup(click.Group):
    """Commands that answer a bad argument, or an error the pipeline explains, with one line naming what is
    wrong and a non-zero exit, never a traceback (nor click's usage text around it). An unexpected error (a
    bug) still shows its traceback."""

    def invoke(self, ctx: click.Context):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _BadArgument(one_line(error.format_message())) from None
        except (ExplainedError, OSError, ClientError, BotoCoreError) as error:
            raise click.ClickException(one_line(error)) from None


def report_problems(problems: list, what: str, shown: int = 20) -> None:
    """Tells, on stderr, how many inputs could not be (fully) used, how many for each reason, and which."""
    if not problems:
        return
    by_kind = Counter(problem.kind for problem in problems)
    reasons = ", ".join(f"{kind}: {count}" for kind, count in sorted(by_kind.items()))
    click.echo(f"{len(problems)} {what} could not be fully used ({reasons}):", err=True)
    for problem in problems[:shown]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > shown:
        click.echo(f"  and {len(problems) - shown} more", err=True)


# what each source asset could not use, by the names of its metadata: (count, counts by reason, the first items)
INPUT_PROBLEM_METADATA = {
    "raw_receipt_words": ("skipped_items", "skipped_items_by_reason", "skipped_item_keys"),
    "sroie_receipts": ("problems", "problems_by_reason", "problem_files"),
}


def report_input_problems(metadata_by_asset: dict[str, dict], shown: int = 5) -> None:
    """Tells, on stderr, what the source assets of a run could not use, from their metadata."""
    for asset, (count_name, reasons_name, items_name) in INPUT_PROBLEM_METADATA.items():
        metadata = metadata_by_asset.get(asset) or {}
        count = int(metadata.get(count_name) or 0)
        if not count:
            continue
        reasons = ", ".join(f"{kind}: {n}" for kind, n in sorted((metadata.get(reasons_name) or {}).items()))
        click.echo(f"{asset}: {count} inputs could not be fully used ({reasons}), for example:", err=True)
        for item in list(metadata.get(items_name) or [])[:shown]:
            click.echo(f"  {item}", err=True)
        click.echo(f"  (all of them in {asset}'s metadata: {items_name})", err=True)


def latest_metadata(instance, assets) -> dict[str, dict]:
    """Asset -> the metadata of its newest materialisation in ``instance``, as plain values."""
    import dagster as dg

    found = {}
    for asset in assets:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is not None and event.asset_materialization is not None:
            found[asset] = {name: value.value for name, value in event.asset_materialization.metadata.items()}
    return found


def existing_path(ctx, param, value: str | None) -> str | None:
    """A folder or file argument: a local one must exist (an s3:// URI is checked where it is read)."""
    if value is None or value.startswith("s3://") or Path(value).expanduser().exists():
        return value
    raise click.BadParameter(f"{value}: no such file or folder", ctx=ctx, param=param)


@click.group(cls=CommandGroup)
def main() -> None:
    """Receipt words to a trained LayoutLM token classifier, orchestrated by Dagster."""


@main.command("local-aws")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--table", default=None, help="Receipts table to create; default: the local deployment's.")
@click.option("--bucket", default=None, help="Artifacts bucket to create; default: the local deployment's.")
def local_aws_command(port: int, host: str, table: str | None, bucket: str | None) -> None:
    """Run the AWS emulator (DynamoDB, S3, EC2) in the foreground, with the receipts table and bucket."""
    settings = DeploymentSettings.from_env({**variables(), "RECEIPT_PIPELINE_DEPLOYMENT": "local"})
    stop = threading.Event()
    # handlers first: a stop asked for while the table is still being created is honoured, not fatal
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if _port_in_use(host, port):
        raise click.BadParameter(f"{host}:{port} is in use", param_hint="'--port'")
    server = local_aws.start_emulator(port, host)
    env = local_aws.emulator_env(*server.get_host_and_port())
    set_variables(env)
    table, bucket = table or settings.receipts_table, bucket or settings.bucket
    local_aws.provision(table, bucket)
    click.echo(f"AWS emulator on {env['AWS_ENDPOINT_URL']}: table {table}, bucket {bucket}. Ctrl-C stops it.")
    click.echo(f"export AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']} AWS_REGION={env['AWS_REGION']}")
    stop.wait()
    server.stop()


@main.command("seed-synthetic")
@click.option("--receipts", type=click.IntRange(min=1), required=True, help="How many receipts to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--table", default=None, help="Target table; default: the deployment's.")
@click.option(
    "--label-noise",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="The share of VALID labels that name a wrong label, as a labeller's slips do.",
)
def seed_synthetic_command(receipts: int, seed: int, table: str | None, label_noise: float) -> None:
    """Write N synthetic receipts (receipt, line, word and label items) in the real schema."""
    from receipt_pipeline.core import aws
    from receipt_pipeline.core.synthetic import seed_synthetic

    settings = DeploymentSettings.from_env()
    if settings.deployment == "local" and not environment().AWS_ENDPOINT_URL:
        raise click.ClickException(
            "AWS_ENDPOINT_URL is not set: the local deployment seeds the emulator (receipt-pipeline local-aws), "
            "never a real table"
        )
    table = table or settings.receipts_table
    client = aws.client("dynamodb")
    try:
        client.describe_table(TableName=table)
    except client.exceptions.ResourceNotFoundException:
        raise click.BadParameter(f"table {table!r} does not exist", param_hint="'--table'") from None
    started = time.perf_counter()
    stats = seed_synthetic(table, receipts, seed, label_noise=label_noise)
    elapsed = time.perf_counter() - started
    click.echo(
        f"wrote {stats.items} items for {receipts} receipts to {table} in {elapsed:.1f}s "
        f"({stats.requests} requests, {stats.retried_items} items retried)"
    )


def _wait_for_port(host: str, port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the AWS emulator exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise click.ClickException(f"the AWS emulator did not open {host}:{port} within {timeout:.0f}s")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def start_emulator_process(port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    if _port_in_use("127.0.0.1", port):
        raise click.ClickException(f"port {port} is in use; pick another with --port")
    process = subprocess.Popen(
        [sys.executable, "-m", "receipt_pipeline.cli", "local-aws", "--port", str(port)], start_new_session=True
    )
    _wait_for_port("127.0.0.1", port, process)
    env = local_aws.emulator_env("127.0.0.1", port)
    set_variables(env)
    # provisioning happens in the child right after the port opens: wait for the table to exist
    from receipt_pipeline.core import aws

    deadline = time.monotonic() + 30
    table = DeploymentSettings.from_env().receipts_table
    while table not in aws.client("dynamodb").list_tables()["TableNames"]:
        if time.monotonic() > deadline:
            raise click.ClickException(f"the emulator did not create table {table}")
        time.sleep(0.2)
    return process, env


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then after ``timeout`` SIGKILL to the process's whole group: a child started in its own
    session (as `dagster dev` and the emulator are) takes its webserver, daemon and code servers with it."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
        process.wait(timeout=timeout)


def _local_dagster_home() -> Path:
    """$DAGSTER_HOME (default ./.dagster_home) holding a copy of the repository's dagster.yaml."""
    home = Path(environment().DAGSTER_HOME or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = Path.cwd() / "dagster.yaml"
    if instance_yaml.is_file():
        shutil.copyfile(instance_yaml, home / "dagster.yaml")
    set_variables({"DAGSTER_HOME": str(home)})
    return home


def _seed_if_empty(receipts: int, seed: int) -> None:
    from receipt_pipeline.core import aws
    from receipt_pipeline.core.synthetic import seed_synthetic

    table = DeploymentSettings.from_env().receipts_table
    if aws.client("dynamodb").scan(TableName=table, Limit=1, Select="COUNT")["Count"] == 0:
        stats = seed_synthetic(table, receipts, seed)
        click.echo(f"seeded {receipts} synthetic receipts ({stats.items} items) into {table}")


# Training takes every default, with the local deployment's budget. The steps run in this one process (each
# step's own process costs seconds of start-up), and the emulator's table is read by a Scan: moto answers
# one query per image slower than one Scan of the same items (BENCHMARKS.md, the table read)
DEMO_RUN_CONFIG = {
    "execution": {"config": {"in_process": {}}},
    "ops": {
        "raw_receipt_words": {"config": {"strategy": "scan"}},
        # the model's labels for the receipts nobody validated, back in the emulator's table for review
        "receipt_predictions": {"config": {"scope": "unlabelled", "write_proposals": True}},
    },
}


@main.command()
@click.option(
    "--checkpoint",
    required=True,
    callback=existing_path,
    help="A model folder or s3:// prefix written by layoutlm_checkpoint.",
)
@click.option(
    "--sroie-dir",
    required=True,
    callback=existing_path,
    help="A SROIE-layout folder (or s3:// prefix), or one split of one.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (keys include field_f1, entity_f1, problems)."
)
def evaluate(checkpoint: str, sroie_dir: str, as_json: bool) -> None:
    """Score a checkpoint on SROIE receipts: seqeval entity level and SROIE field-level exact match.

    Files or lines of the folder that could not be fully used are listed on stderr (and under "problems" in
    the JSON), with the reason for each."""
    import tempfile

    from receipt_pipeline.core.evaluation import checkpoint_folder, evaluate_sroie_folder

    checkpoint_folder(checkpoint)  # a folder that is no model fails here, before the receipts are read
    with tempfile.TemporaryDirectory(prefix="receipt-pipeline-evaluate-") as work:
        evaluation = evaluate_sroie_folder(checkpoint, sroie_dir, work)
    report, problems = evaluation.report, evaluation.problems
    report_problems(problems, "SROIE files or lines")
    if as_json:
        unusable = {
            "count": len(problems),
            "by_reason": dict(Counter(problem.kind for problem in problems)),
            "items": [str(problem) for problem in problems],
        }
        click.echo(json.dumps({**report.to_dict(), "problems": unusable}))
    else:
        click.echo(report.markdown())


def field_lines(summary: dict) -> list[str]:
    """A receipt's fields (inference.receipt_summary), one line each: the value, the words it was read from
    where they differ, and the confidence."""
    lines = []
    for name, field in summary["fields"].items():
        value, text = field.get("value"), field.get("text")
        if value is None and not text:
            continue
        shown = value if value is not None else "(unreadable)"
        said = f" from {text!r}" if text and text != value else ""
        confidence = field.get("confidence")
        lines.append(f"  {name:<10} {shown}{said}" + (f"  ({confidence:.3f})" if confidence is not None else ""))
    return lines or ["  (no field found)"]


def item_lines(summary: dict) -> list[str]:
    """A receipt's line items (inference.receipt_summary), one line each, and whether they add up."""
    items = summary.get("line_items") or []
    if not items:
        return ["  (no line item found)"]
    lines = [f"  {'#':>2}  {'product':<28} {'qty':>6} {'unit':>9} {'total':>9}  confidence"]
    for item in items:
        confidence = item.get("confidence")
        lines.append(
            f"  {item['item']:>2}  {(item['product'] or '-')[:28]:<28} {item['quantity'] or '-':>6} "
            f"{item['unit_price'] or '-':>9} {_amount_shown(item['line_total'], item['line_total_text']):>9}  "
            + (f"{confidence:.3f}" if confidence is not None else "-")
        )
    check = summary.get("items_check") or {}
    if check.get("status") == "adds_up":
        lines.append(f"  line totals {check['items_sum']} add up to the {check['expected']}")
    elif check.get("status") == "does_not_add_up":
        lines.append(f"  line totals {check['items_sum']} do NOT add up to the {check['expected']}: flagged for review")
    return lines


def _amount_shown(value: str | None, text: str | None) -> str:
    return value if value is not None else (f"?{text!r}" if text else "-")


def word_lines(summary: dict) -> list[str]:
    lines = [f"  {'line':>4} {'word':>4}  {'text':<24} {'label':<16} confidence"]
    for word in summary["words"]:
        confidence = word["confidence"]
        lines.append(
            f"  {word['line_id']:>4} {word['word_id']:>4}  {word['text']:<24} {word['label'] or 'O':<16} "
            + (f"{confidence:.3f}" if confidence is not None else "-")
        )
    return lines


@main.command()
@click.option(
    "--checkpoint",
    required=True,
    callback=existing_path,
    help="A model folder or s3:// prefix: the production model's, or one layoutlm_checkpoint wrote.",
)
@click.option(
    "--sroie-dir",
    required=True,
    callback=existing_path,
    help="A SROIE-layout folder (or s3:// prefix) of receipts, or one split of one; entity files are not needed.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the model, each receipt's fields with confidences and words with labels, and "
    "the files it could not use.",
)
def predict(checkpoint: str, sroie_dir: str, as_json: bool) -> None:
    """Label the words of receipts in files (the SROIE layout: <split>/box/*.txt) and extract each receipt's
    merchant, address, date (ISO 8601, read day first as SROIE's receipts print it), time, amounts and line
    items; receipts whose line totals do not add up first, then the least confident.

    Files or lines that could not be read are listed on stderr (and under "problems" in the JSON); missing or
    unmatched entity files are not problems here."""
    from receipt_pipeline.core import inference
    from receipt_pipeline.core.evaluation import checkpoint_folder
    from receipt_pipeline.core.sroie import ENTITY_PROBLEMS, read_sroie_folder

    checkpoint_folder(checkpoint)  # a folder that is no model fails here, before the receipts are read
    sroie = read_sroie_folder(sroie_dir)
    problems = [problem for problem in sroie.problems if problem.kind not in ENTITY_PROBLEMS]
    report_problems(problems, "SROIE files or lines")
    loaded = inference.load_model(checkpoint)
    predicted = inference.predict_words(loaded, sroie.frame)
    summaries = [inference.receipt_summary(predicted, key) for key in predicted.receipts["key"]]
    if as_json:
        unusable = {
            "count": len(problems),
            "by_reason": dict(Counter(problem.kind for problem in problems)),
            "items": [str(problem) for problem in problems],
        }
        document = {"model": {"path": checkpoint, "version": loaded.version}, "receipts": summaries}
        click.echo(json.dumps({**document, "problems": unusable}))
        return
    click.echo(
        f"model {loaded.version} ({checkpoint}): {len(summaries)} receipts, in review order (line totals that do "
        "not add up first, then the least confident)"
    )
    for summary in summaries:
        confidence = summary["confidence"]
        click.echo(f"\n{summary['key']}" + (f" (confidence {confidence:.3f})" if confidence is not None else ""))
        for line in field_lines(summary):
            click.echo(line)
        click.echo(f"  line items ({len(summary['line_items'])}):")
        for line in item_lines(summary):
            click.echo(f"  {line}")


@main.command()
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port for the AWS emulator.")
# the emulator answers a Scan at about 3 ms an item (BENCHMARKS.md, the table read): 40 receipts keep the
# demo's read near half a minute; SROIE's 626 receipts are most of what it trains on
@click.option("--receipts", type=int, default=40, show_default=True, help="Synthetic receipts to seed.")
@click.option("--seed", type=int, default=7, show_default=True)
def demo(port: int, receipts: int, seed: int) -> None:
    """Run the whole pipeline end to end on the local deployment and print where its outputs are."""
    set_variables({"RECEIPT_PIPELINE_DEPLOYMENT": environment().RECEIPT_PIPELINE_DEPLOYMENT})
    settings = DeploymentSettings.from_env()
    if settings.deployment != "local":
        raise click.ClickException("the demo runs on the local deployment only")
    home = _local_dagster_home()
    _exit_cleanly_on_sigterm()
    process, _ = start_emulator_process(port)
    try:
        _seed_if_empty(receipts, seed)
        # the production model, everything it needs, and its predictions; the sweep's trials are not part of it
        command = [
            sys.executable, "-m", "dagster", "asset", "materialize",
            "-m", "receipt_pipeline.definitions", "--select", "*receipt_predictions",
            "--config-json", json.dumps(DEMO_RUN_CONFIG),
        ]  # fmt: skip
        if subprocess.run(command, check=False).returncode != 0:
            raise click.ClickException("the pipeline run failed; its log is above")
    finally:
        stop_process(process)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        report_input_problems(latest_metadata(instance, INPUT_PROBLEM_METADATA))
    assets = Path(settings.artifact_root) / "assets"
    click.echo("\nDemo finished. Outputs:")
    for artifact in sorted(assets.rglob("*.*")):
        click.echo(f"  {artifact}")
    windows_manifest = assets / "windowed_tensors.json"
    if windows_manifest.is_file():
        click.echo(f"Windowed tensors (safetensors shards): {json.loads(windows_manifest.read_text())['folder']}")
    checkpoint = assets / "layoutlm_checkpoint.json"
    if checkpoint.is_file():
        click.echo(f"Model: {json.loads(checkpoint.read_text())['path']}")
    report = assets / "evaluation_report.json"
    if report.is_file():
        document = json.loads(report.read_text())
        folder = Path(document["report_folder"])
        figures = f"entity F1 {document['entity_f1']:.3f}"
        if document.get("field_f1") is not None:
            figures += f", SROIE field F1 {document['field_f1']:.3f}"
        click.echo(f"Report: {folder / 'report.md'} ({figures}; also report.json and confusion.png there)")
    production = assets / "production_model.json"
    if production.is_file():
        click.echo(f"Production model: {json.loads(production.read_text())['path']} (production.json says what it is)")
    else:
        click.echo("Production model: not promoted (see the f1_not_below_production check in the run's log)")
    click.echo(f"Run history: {home} (browse it with `make dev`)")
    _print_predictions(assets / "receipt_predictions.json")


def _print_predictions(document_path: Path) -> None:
    """The demo's last words: one unlabelled receipt's fields, and the label proposals written for review."""
    if not document_path.is_file():
        click.echo("Predictions: not made (receipt_predictions did not run; see the run's log)")
        return
    document = json.loads(document_path.read_text())
    receipts = document["receipts"]
    click.echo(
        f"Predictions on {receipts} {document['scope']} receipt{'' if receipts == 1 else 's'} ({document['words']} "
        f"words), model {document['model_version']}: {document['folder']}"
    )
    if document["examples"]:
        example = document["examples"][0]
        click.echo(f"  {example['key']}, first in the review queue:")
        for line in field_lines(example):
            click.echo(f"  {line}")
        click.echo(f"    line items ({len(example.get('line_items') or [])}):")
        for line in item_lines(example):
            click.echo(f"  {line}")
    proposals = document["proposals"]
    if proposals.get("enabled"):
        click.echo(
            f"  label proposals written to {document['table']}: {proposals.get('written', 0)} (PENDING, by "
            f"{proposals['by']}; {proposals.get('already_labelled', 0)} already there, "
            f"{proposals.get('failed', 0)} failed, confidence at least {proposals['min_confidence']})"
        )
    else:
        click.echo("  label proposals: off")


def dagster_dev_command(ui_host: str, ui_port: int) -> list[str]:
    """The `dagster dev` command line: webserver and daemon, the UI bound to ``ui_host``."""
    return [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", ui_host, "-p", str(ui_port)]


@main.command()
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port for the AWS emulator.")
@click.option(
    "--ui-host",
    default=DEFAULT_UI_HOST,
    show_default=True,
    envvar=UI_HOST_VARIABLE,
    show_envvar=True,
    help="Address the UI binds to; 0.0.0.0 serves it to the whole network (it can launch runs: no login).",
)
@click.option("--ui-port", type=int, default=3000, show_default=True)
@click.option("--receipts", type=int, default=60, show_default=True, help="Synthetic receipts to seed.")
def dev(port: int, ui_host: str, ui_port: int, receipts: int) -> None:
    """Start the AWS emulator (seeded) and `dagster dev` against the local deployment."""
    set_variables({"RECEIPT_PIPELINE_DEPLOYMENT": environment().RECEIPT_PIPELINE_DEPLOYMENT})
    _local_dagster_home()
    _exit_cleanly_on_sigterm()
    emulator, _ = start_emulator_process(port)
    ui = None
    try:
        _seed_if_empty(receipts, seed=7)
        if ui_host != DEFAULT_UI_HOST:
            click.echo(f"the UI binds to {ui_host}: anyone who can reach it can launch runs", err=True)
        ui = subprocess.Popen(dagster_dev_command(ui_host, ui_port), start_new_session=True)
        ui.wait()
    finally:
        if ui is not None:
            stop_process(ui, timeout=30)
        stop_process(emulator)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


@main.command()
@click.option("--stack", "stack_name", required=True, help="The prod stack (deploy/cloudformation).")
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A wheel built already; default: build this checkout's.",
)
def publish(stack_name: str, wheel: Path | None) -> None:
    """Upload this code's wheel (and deploy/prod/dagster.yaml beside it) under the stack's wheel prefix, where
    the Dagster host and every GPU instance it launches install it from."""
    import tempfile

    from receipt_pipeline.core import stack

    if not stack.INSTANCE_CONFIG.exists():
        raise click.ClickException(f"{stack.INSTANCE_CONFIG}: not found; publish runs from a source checkout")
    with tempfile.TemporaryDirectory(prefix="receipt-pipeline-wheel-") as built:
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", built, str(PROJECT_ROOT)],
                check=True,
            )
            [wheel] = Path(built).glob("receipt_pipeline-*.whl")
        for uri in stack.publish(stack_name, wheel):
            click.echo(uri)


@main.command("host-exec", context_settings={"ignore_unknown_options": True})
@click.option("--stack", "stack_name", required=True, help="The prod stack this host belongs to.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def host_exec(stack_name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) with the stack's outputs as its environment and its secrets fetched by name:
    how the Dagster host's services start. Nothing is written down or printed."""
    from receipt_pipeline.core import stack

    env = variables() | stack.host_environment(stack_name)
    sys.stdout.flush()
    os.execvpe(command[0], list(command), env)


def _exit_cleanly_on_sigterm() -> None:
    # the default SIGTERM action kills this process before its `finally` blocks stop the children
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


if __name__ == "__main__":
    main()
