"""The two source assets: labelled receipt words from the users' DynamoDB table, and SROIE receipts."""

from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from receipt_pipeline.core import word_table
from receipt_pipeline.core.dynamo_reader import LabelSnapshot, ReadOptions, label_snapshot, read_receipt_words
from receipt_pipeline.core.sroie import read_sroie
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "ingestion"
TABLE_KEY = dg.AssetKey("receipts_table")


def _markdown_counts(counts: dict[str, int], key: str, value: str) -> str:
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(counts.items()))
    return f"| {key} | {value} |\n|---|---|\n{rows}"


def _column_schema() -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in word_table.SCHEMA])


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            TABLE_KEY,
            group_name=GROUP,
            code_version="1",
            kinds={"dynamodb"},
            description="The users' DynamoDB table, observed: how many VALID labels it holds and the newest "
            "one's time. Its data version changes when labels do, so everything trained on it shows as stale.",
        )
    ],
)
def receipts_table(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.ObserveResult:
    settings.require_aws()
    snapshot = label_snapshot(settings.receipts_table)
    return dg.ObserveResult(
        asset_key=TABLE_KEY,
        data_version=dg.DataVersion(snapshot.version),
        metadata=snapshot_metadata(snapshot, settings.receipts_table),
    )


def snapshot_metadata(snapshot: LabelSnapshot, table: str) -> dict[str, object]:
    return {
        "table": table,
        "valid_labels": snapshot.labels,
        "newest_valid_label": snapshot.newest_timestamp,
        "valid_labels_per_label": dg.MetadataValue.md(_markdown_counts(snapshot.per_label, "label", "VALID labels")),
        "items_evaluated": snapshot.items_evaluated,
    }


class RawReceiptWordsConfig(dg.Config):
    table: str | None = Field(default=None, description="DynamoDB table; default: the deployment's table.")
    accepted_statuses: list[str] = Field(default=["VALID"], description="Label validation statuses to keep.")
    label_allowlist: list[str] = Field(
        default=[], description="Labels to keep, named after merges; empty keeps every label."
    )
    label_merges: dict[str, str] = Field(
        default={}, description="Label renames, e.g. LINE_TOTAL, SUBTOTAL, TAX, GRAND_TOTAL -> AMOUNT."
    )
    read_parallelism: int = Field(default=8, ge=1, le=64, description="Concurrent queries or scan segments.")
    strategy: Literal["gsi3", "scan"] = Field(
        default="gsi3", description="gsi3: index query then one query per image; scan: parallel Scan."
    )
    max_bad_share: float = Field(default=0.05, ge=0, le=1, description="Fail when bad items pass this share.")


@dg.asset(
    group_name=GROUP,
    code_version="3",
    kinds={"dynamodb", "pandas"},
    deps=[TABLE_KEY],
    description="Every word of every receipt with an accepted label, one row per word, boxes 0..1 with y down.",
)
def raw_receipt_words(
    context: dg.AssetExecutionContext, config: RawReceiptWordsConfig, settings: PipelineSettings
) -> dg.Output[pd.DataFrame]:
    settings.require_aws()
    options = ReadOptions(
        table=config.table or settings.receipts_table,
        accepted_statuses=tuple(config.accepted_statuses),
        label_allowlist=tuple(config.label_allowlist),
        label_merges=dict(config.label_merges),
        read_parallelism=config.read_parallelism,
        strategy=config.strategy,
        max_bad_share=config.max_bad_share,
    )
    result = read_receipt_words(options)
    # counted in the same pass that found the data: exactly the labels this table of words was built from
    snapshot = result.snapshot
    if result.skipped_total:
        context.log.warning(f"skipped {result.skipped_total} bad items in {result.table}: {dict(result.skipped)}")
    frame = result.frame
    frame.attrs[word_table.SNAPSHOT_ATTR] = snapshot.to_dict(options.table)
    frame.attrs[word_table.RECEIPT_ADDED_ATTR] = result.receipt_added
    return dg.Output(
        frame,
        data_version=dg.DataVersion(word_table.content_hash(frame)),
        metadata={
            "table": result.table,
            "table_valid_labels": snapshot.labels,
            "table_newest_valid_label": snapshot.newest_timestamp,
            "strategy": result.strategy,
            "receipts": result.receipts,
            "words": len(frame),
            "labelled_words": int(frame["label"].notna().sum()),
            "labelled_words_per_label": dg.MetadataValue.md(
                _markdown_counts(dict(result.label_counts), "label", "words")
            ),
            "words_with_conflicting_labels": result.words_with_conflicting_labels,
            # kept: a box past the crop's edge is clamped into the receipt, not a bad item
            "clamped_words": result.clamped_words,
            "items_read": result.items_read,
            "read_requests": result.requests,
            "skipped_items": result.skipped_total,
            "skipped_items_by_reason": dg.MetadataValue.json(dict(result.skipped)),
            "skipped_item_keys": dg.MetadataValue.json(result.skipped_keys),
            "newest_timestamp_added": result.newest_label_timestamp or "",
            "receipts_without_timestamp_added": result.receipts - len(result.receipt_added),
            "dagster/row_count": len(frame),
            "dagster/column_schema": _column_schema(),
        },
    )


class SroieReceiptsConfig(dg.Config):
    sroie_dir: str | None = Field(
        default=None, description="Folder or s3:// prefix in the official SROIE layout; default: $SROIE_DIR."
    )
    splits: list[str] = Field(default=[], description="SROIE splits to read; empty reads every split present.")


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"pandas"},
    description="SROIE 2019 task 3 receipts as words with boxes, tagged COMPANY, DATE, ADDRESS and TOTAL.",
)
def sroie_receipts(
    context: dg.AssetExecutionContext, config: SroieReceiptsConfig, settings: PipelineSettings
) -> dg.Output[pd.DataFrame]:
    root = config.sroie_dir or settings.sroie_dir
    if not root:
        raise dg.Failure("no SROIE folder: set SROIE_DIR or the asset's sroie_dir config")
    result = read_sroie(root, config.splits or None)
    if result.problems:
        context.log.warning(f"{len(result.problems)} problems reading SROIE at {root}: {result.problem_counts}")
    frame = result.frame
    metadata: dict[str, object] = {
        "sroie_dir": root,
        "receipts_per_split": dg.MetadataValue.json(dict(result.receipts)),
        "words": len(frame),
        "problems": len(result.problems),
        "problems_by_reason": dg.MetadataValue.json(dict(result.problem_counts)),
        "problem_files": dg.MetadataValue.json([str(problem) for problem in result.problems[:20]]),
        "dagster/row_count": len(frame),
        "dagster/column_schema": _column_schema(),
    }
    metadata.update({f"coverage/{name}": float(share) for name, share in result.coverage.items()})
    return dg.Output(frame, data_version=dg.DataVersion(word_table.content_hash(frame)), metadata=metadata)
