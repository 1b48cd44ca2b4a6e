"""The production model run over the table's receipts, and (opt-in) its labels written back as proposals."""

import hashlib
from collections.abc import Iterator
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from receipt_pipeline.core import inference, proposals, storage
from receipt_pipeline.core.dynamo_reader import read_receipts_to_predict
from receipt_pipeline.core.evaluation import embedded_png
from receipt_pipeline.defs.ingestion import TABLE_KEY
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "inference"
CHECK_PROPOSALS = "every_proposal_written"
# what the review queue in the metadata shows of each receipt
QUEUE_COLUMNS = ["review_priority", "key", "confidence", "merchant", "date", "total", "items", "items_check"]
QUEUE_SHOWN = 10
EXAMPLES_KEPT = 5
LISTED = 20  # receipt keys named in the metadata; the count says how many there are


class ReceiptPredictionsConfig(dg.Config):
    scope: Literal["unlabelled", "all", "since_last_run"] = Field(
        default="unlabelled",
        description="unlabelled: receipts with words and no VALID label; all: every receipt; since_last_run: "
        "receipts added (timestamp_added) after the previous materialisation's read began (every receipt the "
        "first time).",
    )
    table: str | None = Field(default=None, description="DynamoDB table; default: the deployment's table.")
    write_proposals: bool | None = Field(
        default=None,
        description="Write each predicted label above min_confidence to the table as a PENDING word label. "
        "Default: the deployment's (RECEIPT_PIPELINE_WRITE_PROPOSALS: on locally, off in prod).",
    )
    min_confidence: float = Field(default=0.9, ge=0, le=1, description="The lowest confidence proposed.")
    device: str = Field(default="cpu", description="Where the model runs: cpu, or cuda where there is one.")
    batch_size: int = Field(default=32, ge=1, le=1024, description="Windows per forward pass.")
    chunk_receipts: int = Field(default=256, ge=1, description="Receipts windowed and predicted at a time.")
    read_parallelism: int = Field(default=8, ge=1, le=64, description="Receipts read at once.")
    write_parallelism: int = Field(default=8, ge=1, le=64, description="Proposals written at once.")
    max_bad_share: float = Field(default=0.05, ge=0, le=1, description="Fail when bad items pass this share.")


def _markdown_counts(counts: dict[str, int], key: str, value: str) -> str:
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(counts.items()))
    return f"| {key} | {value} |\n|---|---|\n{rows}"


def _queue_markdown(receipts: pd.DataFrame) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(QUEUE_COLUMNS) + " |", "|" + "---|" * len(QUEUE_COLUMNS)]
    for row in receipts.head(QUEUE_SHOWN)[QUEUE_COLUMNS].itertuples(index=False):
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


def _version(model_version: str, words: pd.DataFrame) -> str:
    """The same model on the same words gives the same predictions, so the same version."""
    digest = hashlib.sha256(model_version.encode())
    columns = ["key", "line_id", "word_id", "text", "tag"]
    digest.update(pd.util.hash_pandas_object(words[columns], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:24]


def _previous_read(context: dg.AssetExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    started = event.asset_materialization.metadata.get("read_started_at")
    return str(started.value) if started is not None else None


@dg.asset(
    group_name=GROUP,
    code_version="2",
    kinds={"dynamodb", "huggingface", "pandas"},
    deps=[TABLE_KEY],
    check_specs=[dg.AssetCheckSpec(CHECK_PROPOSALS, asset="receipt_predictions")],
    description="The production model over the table's receipts (default: those with no VALID label): a label "
    "and confidence per word; per receipt its merchant, address, phone, ISO date, 24-hour time, total and other "
    "amounts with their confidences; its line items (product, quantity, unit price, line total), checked against "
    "the subtotal; receipts whose items do not add up first, then the least confident; parquet and CSV. With "
    "write_proposals, each label above min_confidence is written back as a PENDING word label, never over an "
    "existing one.",
)
def receipt_predictions(
    context: dg.AssetExecutionContext,
    config: ReceiptPredictionsConfig,
    settings: PipelineSettings,
    production_model: dict,
) -> Iterator:
    settings.require_aws()
    table = config.table or settings.receipts_table
    loaded = inference.load_model(production_model["path"], device=config.device)
    expected = production_model.get("checkpoint", {}).get("version")
    if expected and loaded.version != expected:
        raise dg.Failure(
            f"{production_model['path']} holds model {loaded.version}, not {expected} that production_model "
            "materialised: materialise production_model again"
        )
    since = _previous_read(context) if config.scope == "since_last_run" else None
    read = read_receipts_to_predict(
        table,
        config.scope,
        since=since,
        read_parallelism=config.read_parallelism,
        max_bad_share=config.max_bad_share,
    )
    if read.skipped_total:
        context.log.warning(f"skipped {read.skipped_total} bad items in {table}: {dict(read.skipped)}")
    predicted = inference.predict_words(
        loaded,
        read.frame,
        batch_size=config.batch_size,
        chunk_receipts=config.chunk_receipts,
        table_date_order=settings.table_date_order,
    )
    not_adding_up = int(predicted.receipts["items_flagged"].sum()) if len(predicted.receipts) else 0
    folder = storage.join(settings.artifact_root, "predictions", context.run.run_id)
    files = inference.write_tables(folder, predicted)
    png = inference.confidence_histogram_png(predicted.words)
    storage.write_bytes(storage.join(folder, "confidence.png"), png)

    write = settings.write_proposals if config.write_proposals is None else config.write_proposals
    chosen, left_out = proposals.choose(predicted.words, config.min_confidence)
    written = None
    if write:
        written = proposals.write_proposals(table, chosen, loaded.version, parallelism=config.write_parallelism)
        context.log.info(
            f"label proposals to {table}: {written.written} written, {written.already_labelled} already there, "
            f"{written.failed} failed"
        )
        if written.failed:
            context.log.error(f"{written.failed} label proposals could not be written: {written.failures}")
    proposal_summary = {
        "enabled": bool(write),
        "by": proposals.proposed_by(loaded.version),
        "min_confidence": config.min_confidence,
        "candidates": len(chosen),
        "left_out": dict(left_out),
        **(written.to_dict() if written else {}),
    }
    examples = [inference.receipt_summary(predicted, key) for key in predicted.receipts["key"].head(EXAMPLES_KEPT)]
    document = {
        "table": table,
        "scope": config.scope,
        "since": since,
        "read_started_at": read.started_at,
        "model_path": production_model["path"],
        "model_version": loaded.version,
        "receipts": read.receipts,
        "words": len(predicted.words),
        "entity_words": predicted.entity_words,
        "line_items": len(predicted.items),
        "receipts_not_adding_up": not_adding_up,
        "clamped_words": read.clamped_words,
        "labels_per_kind": dict(predicted.labels_per_kind),
        "receipts_without_words": read.receipts_without_words[:LISTED],
        "folder": folder,
        **files,
        "proposals": proposal_summary,
        # the least confident receipts, for a first look (the receipts table has them all)
        "examples": examples,
        "dagster_run_id": context.run.run_id,
    }
    yield dg.Output(
        document,
        data_version=dg.DataVersion(_version(loaded.version, predicted.words)),
        metadata={
            "table": table,
            "scope": config.scope,
            "read_started_at": read.started_at,
            "since": since or "",
            "model_version": loaded.version,
            "model_path": dg.MetadataValue.path(production_model["path"]),
            "receipts_in_table": read.receipts_in_table,
            "receipts_chosen": read.receipts_chosen,
            "receipts": read.receipts,
            "receipts_without_words": len(read.receipts_without_words),
            "receipts_without_words_keys": dg.MetadataValue.json(read.receipts_without_words[:LISTED]),
            "undated_receipts": read.undated_receipts,
            "words": len(predicted.words),
            "entity_words": predicted.entity_words,
            "line_items": len(predicted.items),
            # line totals that do not come to the subtotal: these receipts head the review queue
            "receipts_not_adding_up": not_adding_up,
            "labels_per_kind": dg.MetadataValue.md(_markdown_counts(dict(predicted.labels_per_kind), "label", "words")),
            "confidence_histogram": dg.MetadataValue.md(embedded_png("word confidence", png)),
            "review_queue": dg.MetadataValue.md(_queue_markdown(predicted.receipts)),
            "windows": predicted.windows,
            "predict_seconds": predicted.seconds,
            "items_read": read.items_read,
            "read_requests": read.requests,
            "clamped_words": read.clamped_words,
            "skipped_items": read.skipped_total,
            "skipped_items_by_reason": dg.MetadataValue.json(dict(read.skipped)),
            "skipped_item_keys": dg.MetadataValue.json(read.skipped_keys),
            "proposals": dg.MetadataValue.json(proposal_summary),
            "proposals_written": written.written if written else 0,
            "proposals_already_labelled": written.already_labelled if written else 0,
            "proposals_failed": written.failed if written else 0,
            **{name: dg.MetadataValue.path(uri) for name, uri in files.items()},
            "dagster/row_count": len(predicted.words),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(kind)) for name, kind in predicted.words.dtypes.items()]
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name=CHECK_PROPOSALS,
        passed=written is None or written.failed == 0,
        description=(
            "proposals off"
            if written is None
            else f"{written.written} written, {written.already_labelled} already there, {written.failed} failed"
        ),
        metadata={
            "failed": written.failed if written else 0,
            "failures": dg.MetadataValue.json(written.failures if written else []),
            "failures_by_reason": dg.MetadataValue.json(dict(written.failures_by_reason) if written else {}),
        },
    )
