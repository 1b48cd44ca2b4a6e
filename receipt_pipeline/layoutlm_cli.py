"""``layoutlm-cli``: train or sweep through Dagster from a shell, with the earlier tool's flags, score every
checkpoint of a run (``eval-checkpoints``, here, without Dagster), and predict one receipt of the table
(``infer``, here).

Without ``--dagster-url`` the run executes here, recorded in the Dagster instance at ``$DAGSTER_HOME``
(default ``./.dagster_home``, the one `make dev` serves), so it shows in the UI. With ``--dagster-url``
the run is submitted to that deployment's webserver: it is queued, and the run launcher starts it (on a
GPU instance in prod, as for any training run).
"""

from __future__ import annotations

import json
import time
from pathlib import PurePosixPath

import click

from receipt_pipeline.cli import CommandGroup, existing_path, one_line, report_input_problems
from receipt_pipeline.core import storage, training_options
from receipt_pipeline.core.checkpoint_scores import SPLITS
from receipt_pipeline.core.settings import environment

JOB_NAME_TAG = "receipt_pipeline/job_name"
DATA_ASSETS = ["raw_receipt_words", "sroie_receipts", "bio_receipt_split", "windowed_tensors"]
ASSET_JOB = "__ASSET_JOB"


@click.group(cls=CommandGroup)
def main() -> None:
    """Train or sweep the LayoutLM token classifier through Dagster; score a run's checkpoints."""


def _dagster_url_option(function):
    function = click.option(
        "--wait/--no-wait", default=True, show_default=True, help="With --dagster-url: wait for the run to end."
    )(function)
    return click.option(
        "--dagster-url",
        default=None,
        help="Submit to this Dagster webserver (e.g. http://dagster.internal:3000) instead of running here.",
    )(function)


def _base_model_argument(ctx, param, value: str | None) -> str | None:
    """A base model that names a path must be an existing folder; hub ids, s3:// and 'compact' pass."""
    if value is not None and value.startswith((".", "/", "~")):
        return existing_path(ctx, param, value)
    return value


def _click_type(flag: training_options.Flag):
    """The flag's type with the setting's bounds, so a value out of range is refused before any run starts."""
    if flag.kind not in (int, float):
        return flag.kind
    bounds = flag.bounds
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    kind = click.IntRange if flag.kind is int else click.FloatRange
    if low is None and high is None:
        return flag.kind
    return kind(min=low, max=high, min_open="gt" in bounds, max_open="lt" in bounds)


def _training_flags(exclude: tuple[str, ...] = ()):
    """One flag per training setting (core.training_options declares them); unset flags leave the config's
    defaults."""

    def decorate(function):
        for flag in reversed(training_options.cli_settings()):
            if flag.name in exclude:
                continue
            if flag.kind is bool:
                option = click.option(f"{flag.flag}/--no-{flag.flag[2:]}", flag.name, default=None, help=flag.help)
            else:
                callback = _base_model_argument if flag.name == "base_model" else None
                option = click.option(
                    flag.flag, flag.name, type=_click_type(flag), default=None, help=flag.help, callback=callback
                )
            function = option(function)
        return function

    return decorate


def _settings_given(flags: dict) -> dict:
    names = {flag.name for flag in training_options.cli_settings()}
    return {name: value for name, value in flags.items() if name in names and value is not None}


@main.command()
@click.option("--job-name", required=True, help="The training run's name: its folder is <runs>/<job-name>.")
@click.option("--dynamo-table", default=None, help="Rebuild the training data from this table first.")
@_training_flags()
@click.option("--output-s3-path", "output_path", default=None, help="Where run folders go (s3:// prefix or folder).")
@click.option("--use-best-hyperparameters", is_flag=True, help="Take the sweep's best settings.")
@_dagster_url_option
def train(job_name: str, dynamo_table: str | None, dagster_url: str | None, wait: bool, **flags) -> None:
    """Materialise layoutlm_checkpoint with this config, as a Dagster run, and print its run folder."""
    checkpoint = _settings_given(flags)
    if flags["output_path"]:
        checkpoint["output_path"] = flags["output_path"]
    if flags["use_best_hyperparameters"]:
        checkpoint["use_best_hyperparameters"] = True
    checkpoint["run_name"] = job_name
    run_config: dict = {"ops": {"layoutlm_checkpoint": {"config": checkpoint}}}
    selection = ["layoutlm_checkpoint"]
    if dynamo_table:
        selection = [*DATA_ASSETS, *selection]
        run_config["ops"]["raw_receipt_words"] = {"config": {"table": dynamo_table}}
    tags = {JOB_NAME_TAG: job_name}
    if dagster_url:
        run_id = _submit(dagster_url, selection, run_config, tags)
        status = _wait_for(dagster_url, run_id) if wait else "QUEUED"
        click.echo(f"dagster run: {run_id} ({status})")
        click.echo(f"run folder: {_runs_root(checkpoint.get('output_path'))}/{job_name}")
        if status not in ("SUCCESS", "QUEUED"):
            raise click.ClickException(f"run {run_id} ended {status}")
        return
    result = _execute_here(selection, run_config, tags)
    report_input_problems({asset: _materialisation_metadata(result, asset) for asset in _materialised(result)})
    metadata = _materialisation_metadata(result, "layoutlm_checkpoint")
    best = str(metadata["path"])
    click.echo(f"dagster run: {result.run_id}")
    click.echo(f"best validation F1: {metadata['best_validation_f1']:.4f}")
    click.echo(f"run folder: {_parent(best)}")


@main.command()
@click.option("--study", default="layoutlm", show_default=True, help="The Optuna study (and partition prefix).")
@click.option("--trials", type=int, default=12, show_default=True)
@click.option("--lr-min", type=float, default=1e-5, show_default=True)
@click.option("--lr-max", type=float, default=5e-5, show_default=True)
@click.option("--effective-batch-sizes", default="8,16,32", show_default=True, help="Comma-separated.")
@click.option("--max-per-device-batch-size", type=int, default=None, help="Default: 32 on a GPU, 8 on a CPU.")
@click.option("--search-max-grad-norm", is_flag=True, help="Also search max_grad_norm (0, 0.5, 1).")
@_training_flags(exclude=training_options.SEARCHED_BY_SWEEPS)
@_dagster_url_option
def sweep(study: str, trials: int, dagster_url: str | None, wait: bool, **flags) -> None:
    """Add TRIALS partitions of sweep_trial, run each as its own Dagster run, then pick best_hyperparameters.

    Each trial trains 4 epochs unless --epochs says otherwise (3 to 5)."""
    trial_config = {
        **_settings_given(flags),
        "study": study,
        "learning_rate": [flags["lr_min"], flags["lr_max"]],
        "effective_batch_sizes": [int(size) for size in flags["effective_batch_sizes"].split(",")],
    }
    if flags["max_per_device_batch_size"] is not None:
        trial_config["max_per_device_batch_size"] = flags["max_per_device_batch_size"]
    if flags["search_max_grad_norm"]:
        trial_config["max_grad_norms"] = [0.0, 0.5, 1.0]
    trial_run_config = {"ops": {"sweep_trial": {"config": trial_config}}}
    best_run_config = {"ops": {"best_hyperparameters": {"config": {"study": study}}}}
    from receipt_pipeline.defs.sweep import SWEEP_TRIALS, trial_partition

    if dagster_url:
        existing = _partitions_remote(dagster_url)
        partitions = _next_partitions(study, existing, trials, trial_partition)
        run_ids = []
        for partition in partitions:
            _add_partition_remote(dagster_url, SWEEP_TRIALS.name, partition)
            tags = {"dagster/partition": partition}
            run_ids.append(_submit(dagster_url, ["sweep_trial"], trial_run_config, tags))
            click.echo(f"trial {partition}: dagster run {run_ids[-1]}")
        if not wait:
            click.echo("submitted; materialise best_hyperparameters once the trials have finished")
            return
        failed = [run_id for run_id in run_ids if _wait_for(dagster_url, run_id) != "SUCCESS"]
        if failed:
            raise click.ClickException(f"trial runs did not succeed: {failed}")
        best_run = _submit(dagster_url, ["best_hyperparameters"], best_run_config, {})
        click.echo(f"best_hyperparameters: dagster run {best_run} ({_wait_for(dagster_url, best_run)})")
        return

    import dagster as dg

    _local_instance_home()
    with dg.DagsterInstance.get() as instance:
        existing = instance.get_dynamic_partitions(SWEEP_TRIALS.name)
        partitions = _next_partitions(study, existing, trials, trial_partition)
        instance.add_dynamic_partitions(SWEEP_TRIALS.name, partitions)
    for partition in partitions:
        result = _execute_here(["sweep_trial"], trial_run_config, {}, partition_key=partition)
        trial = _materialisation_metadata(result, "sweep_trial")
        click.echo(f"trial {partition}: validation F1 {trial['validation_f1']:.4f} ({json.dumps(trial['params'])})")
    result = _execute_here(["best_hyperparameters"], best_run_config, {})
    best = _materialisation_metadata(result, "best_hyperparameters")
    click.echo(best["all_trials"])
    click.echo(f"best: {best['partition']} (validation F1 {best['validation_f1']:.4f}): {json.dumps(best['params'])}")


@main.command("eval-checkpoints")
@click.option(
    "--run",
    "run",
    required=True,
    callback=existing_path,
    help="A training run's folder or s3:// prefix (its checkpoints, best/ and windows_manifest.json).",
)
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="The windows' split.")
@click.option(
    "--windows",
    default=None,
    callback=existing_path,
    help="A windows manifest (JSON file or s3:// object) to score on instead of the run's windows_manifest.json.",
)
@click.option(
    "--output-dir",
    default=None,
    help="Where the CSV, JSON and plot go (folder or s3://). Default: <run>/checkpoint_scores/<split> for a local "
    "run, ./checkpoint_scores/<run name>/<split> for an s3:// one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the scores and where the files are).")
def eval_checkpoints(run: str, split: str, windows: str | None, output_dir: str | None, as_json: bool) -> None:
    """Score every complete checkpoint of a run, and its best model, on the same frozen windows: entity
    precision, recall and F1 (seqeval, strict IOB2) by step, a table and a plot of F1 by step.

    Runs here, without Dagster; on a GPU if there is one."""
    from receipt_pipeline.core import checkpoint_scores

    def scored(row) -> None:
        click.echo(f"scored {row.checkpoint} (step {row.step}): F1 {row.f1:.4f}", err=True)

    scores = checkpoint_scores.score_checkpoints(run, split, windows, on_scored=scored)
    files = checkpoint_scores.write_scores(scores, output_dir or checkpoint_scores.default_output_dir(run, split))
    for name in scores.skipped:
        click.echo(f"skipped {name}: no COMPLETE marker (being written, or cut short)", err=True)
    if as_json:
        click.echo(json.dumps({**scores.to_dict(), "files": files}))
        return
    click.echo(_scores_table(scores))
    click.echo("files:")
    for path in files.values():
        click.echo(f"  {path}")


def _scores_table(scores) -> str:
    highest = scores.highest()
    lines = [
        f"run {scores.run}, {scores.split} split: {scores.receipts} receipts, {scores.windows} windows "
        f"(windows of {scores.manifest})",
        f"{'checkpoint':<20} {'step':>7} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}",
    ]
    for row in [*scores.rows, *([scores.best] if scores.best else [])]:
        mark = "  * highest F1" if row is highest else ""
        lines.append(
            f"{row.checkpoint:<20} {row.step:>7} {row.precision:>9.4f} {row.recall:>7.4f} {row.f1:>7.4f} "
            f"{row.support:>8}{mark}"
        )
    return "\n".join(lines)


def _export_options(function):
    """--checkpoint-dir | --s3-uri, --output-dir, and the optional windows to check the export on."""
    options = [
        click.option(
            "--checkpoint-dir",
            default=None,
            callback=existing_path,
            help="A model folder the pipeline wrote: a run's best/, a checkpoint, or the production model's folder.",
        ),
        click.option(
            "--s3-uri", default=None, help="The same under an s3:// prefix (e.g. s3://BUCKET/models/production)."
        ),
        click.option(
            "--output-dir",
            required=True,
            help="The export's folder (or s3:// prefix): replaced whole, its COMPLETE marker written last.",
        ),
        click.option(
            "--windows",
            default=None,
            callback=existing_path,
            help="A windows manifest (JSON file or s3:// object): check the export's predictions against PyTorch's "
            "on its --split; without it nothing is compared.",
        ),
        click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="--windows' split."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _export_source(checkpoint_dir: str | None, s3_uri: str | None, windows: str | None, split: str):
    """The model's local folder, its pad token id, and the windows to check on (None without --windows)."""
    from receipt_pipeline.core import base_model, inference
    from receipt_pipeline.core.checkpoint_scores import read_manifest
    from receipt_pipeline.core.windows import WindowSet

    if bool(checkpoint_dir) == bool(s3_uri):
        raise click.UsageError("give one of --checkpoint-dir and --s3-uri")
    if s3_uri and not storage.is_s3(s3_uri):
        raise click.UsageError(f"--s3-uri {s3_uri}: not an s3:// prefix (a local folder goes to --checkpoint-dir)")
    loaded = inference.load_model(checkpoint_dir or s3_uri)
    chosen = None
    if windows:
        manifest, uri = read_manifest(windows, windows)
        cut_with = manifest.get("tokenizer", {}).get("fingerprint")
        if cut_with and cut_with != base_model.tokenizer_fingerprint(loaded.tokenizer):
            raise click.UsageError(f"--windows {uri} were cut with another tokenizer than the model's")
        chosen = WindowSet(manifest, split)
        if not len(chosen):
            raise click.UsageError(f"--windows {uri} has no {split} windows")
    return loaded.folder, loaded.pad_token_id, chosen


def _write_export(output_dir: str, build) -> str:
    """``build(folder)`` into ``output_dir``, or, for an s3:// one, into a local folder uploaded markers last."""
    import tempfile
    from pathlib import Path

    from receipt_pipeline.core import export

    if not storage.is_s3(output_dir):
        build(Path(output_dir).expanduser())
        return output_dir
    with tempfile.TemporaryDirectory(prefix="layoutlm-export-") as scratch:
        build(Path(scratch) / "export")
        export.upload_export(Path(scratch) / "export", output_dir)
    return output_dir


def _parity_line(name: str, result: dict) -> str:
    return (
        f"{name}: argmax = PyTorch's on {result['argmax_agreement']:.4%} of {result['tokens']} tokens, entity F1 "
        f"{result['entity_f1']:.4f} (PyTorch {result['reference_entity_f1']:.4f}, {result['entity_f1_change']:+.4f})"
    )


@main.command("export-onnx")
@_export_options
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="int8: add model.int8.onnx (onnxruntime's dynamic int8 quantisation) beside the float32 graph.",
)
@click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="onnxruntime's transformer optimizer (attention, LayerNorm, GELU fusions; the graph then runs in "
    "onnxruntime only); --no-fuse keeps standard ONNX operators.",
)
def export_onnx_command(
    checkpoint_dir: str | None,
    s3_uri: str | None,
    output_dir: str,
    windows: str | None,
    split: str,
    quantize: str | None,
    fuse: bool,
) -> None:
    """Export a model to ONNX (float32, batch and sequence axes dynamic, torch.onnx dynamo), checked with
    onnxruntime against PyTorch on --windows: a float32 graph whose argmax differs on more than 0.1% of tokens,
    or whose entity F1 differs by more than 0.001, is not written."""
    from receipt_pipeline.core import export

    folder, pad_token_id, chosen = _export_source(checkpoint_dir, s3_uri, windows, split)
    documents = []

    def build(target):
        documents.append(
            export.export_onnx(
                folder, target, quantize_int8=quantize == "int8", fuse=fuse, windows=chosen, pad_token_id=pad_token_id
            )
        )

    written = _write_export(output_dir, build)
    document = documents[0]
    for precision, file in document["files"].items():
        click.echo(f"{precision}: {storage.join(written, file['file'])} ({file['bytes'] / 2**20:.1f} MiB)")
    if document.get("fused_operators"):
        click.echo("fused: " + ", ".join(f"{name} {count}" for name, count in document["fused_operators"].items()))
    for precision in ("float32", "int8"):
        if precision in document.get("parity", {}):
            click.echo(_parity_line(precision, document["parity"][precision]))


@main.command("export-coreml")
@_export_options
@click.option(
    "--quantize",
    type=click.Choice(["float16", "int8"]),
    default="float16",
    show_default=True,
    help="float16: the ML program computes and stores weights in float16; int8: weights linearly quantised to "
    "int8 (coremltools.optimize), computing in float16.",
)
def export_coreml_command(
    checkpoint_dir: str | None, s3_uri: str | None, output_dir: str, windows: str | None, split: str, quantize: str
) -> None:
    """Convert a model to Core ML (an .mlpackage ML program, float16, batch and sequence as ranges; needs
    coremltools: pip install 'receipt_pipeline[coreml]'). Its spec and graph are checked here (no float16 op fed
    an infinite constant); predictions are compared on --windows only where a Core ML runtime exists (macOS)."""
    from receipt_pipeline.core import export

    folder, pad_token_id, chosen = _export_source(checkpoint_dir, s3_uri, windows, split)
    documents = []

    def build(target):
        documents.append(export.export_coreml(folder, target, quantize, windows=chosen, pad_token_id=pad_token_id))

    written = _write_export(output_dir, build)
    document = documents[0]
    click.echo(f"{storage.join(written, document['file'])} ({document['bytes'] / 2**20:.1f} MiB, {quantize})")
    for feature in document["spec"]["inputs"] + document["spec"]["outputs"]:
        ranges = " x ".join(f"{low}..{high}" for low, high in feature["ranges"]) or "any shape"
        click.echo(f"  {feature['name']}: {feature['dtype']} {ranges}")
    click.echo(f"float16 operations fed an infinite constant: {len(document['infinite_constants_feeding_fp16_ops'])}")
    checked = document.get("parity")
    if checked and checked.get("status") == "skipped":
        click.echo(f"predictions not compared: {checked['reason']}")
    elif checked:
        click.echo(_parity_line("Core ML", checked))


@main.command()
@click.option("--image-id", required=True, help="The receipt's image (the uuid of its IMAGE#<uuid> partition).")
@click.option("--receipt-id", type=click.IntRange(min=1), required=True, help="The receipt's number in the image.")
@click.option(
    "--model-dir", default=None, callback=existing_path, help="A model folder; default: the production model."
)
@click.option("--model-s3-uri", default=None, help="A model's s3:// prefix; default: the production model.")
@click.option("--table", default=None, help="The receipts table; default: the deployment's (RECEIPTS_TABLE).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the receipt, its fields and words.")
def infer(
    image_id: str, receipt_id: int, model_dir: str | None, model_s3_uri: str | None, table: str | None, as_json: bool
) -> None:
    """Predict one receipt of the table: its words with their labels and confidences, its fields (merchant,
    address, phone, date as ISO 8601, time on a 24-hour clock, total and other amounts as decimals) and its line
    items, checked against its subtotal. Writes nothing to the table.

    Runs here, on the CPU. The model defaults to the deployment's production model (models/production under
    its artifacts)."""
    from receipt_pipeline.cli import field_lines, item_lines, word_lines
    from receipt_pipeline.core import inference
    from receipt_pipeline.core.dynamo_reader import read_receipts_to_predict
    from receipt_pipeline.core.promotion import production_root
    from receipt_pipeline.core.settings import DeploymentSettings

    if model_dir and model_s3_uri:
        raise click.UsageError("--model-dir and --model-s3-uri name two models: give one")
    if model_s3_uri and not storage.is_s3(model_s3_uri):
        raise click.BadParameter(f"{model_s3_uri}: not an s3:// URI", param_hint="'--model-s3-uri'")
    settings = DeploymentSettings.from_env()
    if settings.deployment == "local" and not environment().AWS_ENDPOINT_URL:
        raise click.ClickException(
            "AWS_ENDPOINT_URL is not set: the local deployment reads the emulator's table (receipt-pipeline "
            "local-aws), never a real one"
        )
    source = model_dir or model_s3_uri or production_root(settings.artifact_root)
    table = table or settings.receipts_table
    read = read_receipts_to_predict(table, receipts=[(image_id, receipt_id)])
    if not read.receipts:
        raise click.ClickException(f"table {table!r} has no receipt {image_id} {receipt_id} with words")
    loaded = inference.load_model(source)
    predicted = inference.predict_words(loaded, read.frame, table_date_order=settings.table_date_order)
    summary = inference.receipt_summary(predicted, predicted.receipts["key"].iloc[0])
    if as_json:
        document = {"table": table, "model": {"path": source, "version": loaded.version}, **summary}
        click.echo(json.dumps({**document, "clamped_words": read.clamped_words}))
        return
    clamped = f" ({read.clamped_words} with a box past the receipt's edge, clamped)" if read.clamped_words else ""
    click.echo(f"receipt {image_id} {receipt_id:05d} of table {table}: {len(summary['words'])} words{clamped}")
    click.echo(f"model {loaded.version} ({source})")
    click.echo("fields:")
    for line in field_lines(summary):
        click.echo(line)
    click.echo("line items:")
    for line in item_lines(summary):
        click.echo(line)
    click.echo("words:")
    for line in word_lines(summary):
        click.echo(line)


def _next_partitions(study: str, existing, count: int, name) -> list[str]:
    taken = {key for key in existing if key.startswith(f"{study}-")}
    partitions, index = [], 0
    while len(partitions) < count:
        if name(study, index) not in taken:
            partitions.append(name(study, index))
        index += 1
    return partitions


# ------------------------------------------------------------------------------------------ here


def _local_instance_home() -> None:
    if not environment().DAGSTER_HOME:
        from receipt_pipeline.cli import _local_dagster_home

        _local_dagster_home()


def _execute_here(selection: list[str], run_config: dict, tags: dict, partition_key: str | None = None):
    import dagster as dg

    from receipt_pipeline.core.settings import DeploymentSettings
    from receipt_pipeline.definitions import build_definitions
    from receipt_pipeline.defs.resources import resources_for

    _local_instance_home()
    definitions = build_definitions()
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [*definitions.assets, *definitions.asset_checks],
            resources=resources_for(DeploymentSettings.from_env()),
            instance=instance,
            selection=selection,
            run_config=run_config,
            tags=tags,
            partition_key=partition_key,
            raise_on_error=False,
        )
    if not result.success:
        failures = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
        reasons = "; ".join(
            f"{event.step_key}: {one_line(event.step_failure_data.error.message)}" for event in failures
        )
        raise click.ClickException(f"dagster run {result.run_id} failed: {reasons}")
    return result


def _materialised(result) -> list[str]:
    return [event.asset_key.to_user_string() for event in result.get_asset_materialization_events()]


def _materialisation_metadata(result, asset: str) -> dict:
    [materialisation] = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in materialisation.metadata.items()}


def _parent(uri: str) -> str:
    return str(PurePosixPath(uri).parent) if not storage.is_s3(uri) else uri.rstrip("/").rsplit("/", 1)[0]


def _runs_root(output_path: str | None) -> str:
    if output_path:
        return output_path.rstrip("/")
    from receipt_pipeline.core.settings import DeploymentSettings

    return storage.join(DeploymentSettings.from_env().artifact_root, "runs")


# ------------------------------------------------------------------------------------------ remote


def _client(url: str):
    from urllib.parse import urlparse

    from dagster_graphql import DagsterGraphQLClient

    parsed = urlparse(url)
    return DagsterGraphQLClient(
        parsed.hostname,
        port_number=parsed.port,
        use_https=parsed.scheme == "https",
        path_prefix=parsed.path.rstrip("/"),
    )


def _submit(url: str, selection: list[str], run_config: dict, tags: dict) -> str:
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClientError

    try:
        return _client(url).submit_job_execution(
            ASSET_JOB,
            run_config=run_config,
            tags=tags,
            asset_selection=[dg.AssetKey(name) for name in selection],
        )
    except DagsterGraphQLClientError as error:
        raise click.ClickException(f"--dagster-url {url}: {one_line(error)}") from None


def _wait_for(url: str, run_id: str, timeout: float = 24 * 3600) -> str:
    client = _client(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(5)
    return "TIMED_OUT"


def _graphql(url: str, query: str, variables: dict) -> dict:
    import requests

    response = requests.post(url.rstrip("/") + "/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    document = response.json()
    if document.get("errors"):
        raise click.ClickException(f"{url}: {document['errors']}")
    return document["data"]


REPOSITORY = {"repositoryLocationName": "receipt_pipeline", "repositoryName": "__repository__"}


def _partitions_remote(url: str) -> list[str]:
    data = _graphql(
        url,
        """query ($key: AssetKeyInput!) {
          assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
        }""",
        {"key": {"path": ["sweep_trial"]}},
    )
    return list((data.get("assetNodeOrError") or {}).get("partitionKeys") or [])


def _add_partition_remote(url: str, partitions_def: str, partition: str) -> None:
    data = _graphql(
        url,
        """mutation ($selector: RepositorySelector!, $name: String!, $key: String!) {
          addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
            __typename
            ... on PythonError { message }
            ... on DuplicateDynamicPartitionError { partitionName }
          }
        }""",
        {"selector": REPOSITORY, "name": partitions_def, "key": partition},
    )
    outcome = data["addDynamicPartition"]
    if outcome["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise click.ClickException(f"could not add partition {partition}: {outcome}")


if __name__ == "__main__":
    main()
