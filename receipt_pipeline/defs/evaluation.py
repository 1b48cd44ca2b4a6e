"""The evaluation report of a checkpoint, and the promotion gate on it."""

import hashlib
import json
import tempfile

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from receipt_pipeline.core import bio, promotion, storage, table_scores
from receipt_pipeline.core.evaluation import (
    TRAIN_SAMPLE_MAX,
    confusion_png,
    embedded_png,
    evaluate,
    per_label_f1_png,
    score_on_same_receipts,
    write_details,
)
from receipt_pipeline.defs.promotion import promotion_decision
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "evaluation"
CHECK_F1 = "f1_not_below_production"


def _checkpoint_reference(checkpoint: dict) -> dict:
    """What a report or a promotion says of the checkpoint it used: enough to find it and its data."""
    keys = ("path", "run", "version", "dagster_run_id", "windowed_tensors_version", "bio_receipt_split_version")
    return {key: checkpoint.get(key, "") for key in keys} | {"source_snapshots": checkpoint.get("source_snapshots", {})}


def _digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:24]


def evaluation_basis(split_record: dict, windowed_tensors: dict, split: str) -> dict:
    """What two reports must share to be comparable: the same receipts, labels and windowing."""
    return {
        "split": split,
        "keys_sha256": split_record.get("keys_sha256", {}).get(split, ""),
        "strategy": split_record.get("strategy", ""),
        "labels": list(windowed_tensors.get("labels", [])),
        "window": windowed_tensors.get("window", {}),
    }


def comparability(basis: dict, other: dict | None) -> tuple[bool, str]:
    """Whether a report on ``basis`` compares with one on ``other``, and if not, why."""
    if not other:
        return False, "the production model records no evaluation basis (promoted before bases were recorded)"
    reasons = []
    if basis["keys_sha256"] != other.get("keys_sha256"):
        reasons.append(f"other {basis['split']} receipts ({basis['keys_sha256']} against {other.get('keys_sha256')})")
    if basis["labels"] != other.get("labels"):
        reasons.append(f"other labels ({', '.join(sorted(set(basis['labels']) ^ set(other.get('labels', []))))})")
    if basis["window"] != other.get("window"):
        reasons.append(f"other windowing ({basis['window']} against {other.get('window')})")
    return (not reasons), "; ".join(reasons) or "same receipts, labels and windowing"


class EvaluationReportConfig(dg.Config):
    split: str = Field(default="test", description="Which split of the windows to score.")
    sroie_labels: dict[str, str] = Field(
        default=dict(bio.DEFAULT_SROIE_LABELS), description="SROIE field labels as the model names them."
    )
    train_sample: int | None = Field(
        default=None,
        ge=0,
        description="Training receipts to score the model on beside the test receipts (the gap reads as templates "
        f"memorised); default: as many as the split scored, at most {TRAIN_SAMPLE_MAX}; 0: none.",
    )


@dg.asset(
    group_name=GROUP,
    code_version="4",
    kinds={"seqeval"},
    description="Entity-level (seqeval strict IOB2) and SROIE field-level scores of the checkpoint on the "
    "test windows; the table's receipts' field exact match and line items; the product-detail macro F1; the "
    "gap to a sample of its training receipts; slices (source, seen or unseen merchant, recent or older), a "
    "per-receipt table, token errors, a review queue, and the production model scored on the same receipts; "
    "Markdown, JSON, PNG, parquet.",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    settings: PipelineSettings,
    layoutlm_checkpoint: dict,
    windowed_tensors: dict,
    bio_receipt_split: pa.Table,
) -> dg.Output[dict]:
    rows = bio_receipt_split.filter(pa.compute.equal(bio_receipt_split.column("split"), config.split))
    words = dict(zip(rows.column("key").to_pylist(), rows.column("words").to_pylist(), strict=True))
    record = bio.record_of(bio_receipt_split.schema.metadata)
    train = bio_receipt_split.filter(pa.compute.equal(bio_receipt_split.column("split"), "train"))
    receipts = {row["key"]: row for row in rows.select(["key", "source", "merchant", "added_at"]).to_pylist()}
    sample = min(rows.num_rows, TRAIN_SAMPLE_MAX) if config.train_sample is None else config.train_sample
    report = evaluate(
        layoutlm_checkpoint["path"],
        windowed_tensors,
        split=config.split,
        words=words,
        # the field strings came with the receipts, through sroie_receipts and the split: the lineage's own
        references=bio.reference_fields(rows),
        sroie_labels=config.sroie_labels,
        receipts=receipts,
        train_merchants=set(train.column("merchant").to_pylist()) - {bio.UNKNOWN_MERCHANT},
        recent_since=record.get("recent_since"),
        layouts=table_scores.layouts_of(rows),
        table_date_order=settings.table_date_order,
        train_sample=sample,
    )
    folder = storage.join(settings.artifact_root, "reports", context.run.run_id)
    basis = evaluation_basis(record, windowed_tensors, config.split)
    # the champion: the production model scored on these same receipts, for the paired promotion gate
    current = promotion.current_production(settings.production_model_root)
    champion = None
    if current is not None:
        with tempfile.TemporaryDirectory(prefix="champion-") as scratch:
            champion = score_on_same_receipts(
                settings.production_model_root, windowed_tensors, config.split, rows, scratch, settings.table_date_order
            )
        champion["version"] = current.get("checkpoint", {}).get("version", "")
        # its gap is its own: on its training receipts, recorded with it when it was promoted
        gap = current.get("scores", {}).get("train_test_entity_f1_gap")
        if gap is not None:
            champion["figures"]["train_test_entity_f1_gap"] = gap
    comparable, why = comparability(basis, current.get("basis") if current else None)
    document = {
        **report.to_dict(),
        "checkpoint": _checkpoint_reference(layoutlm_checkpoint),
        "basis": basis,
        "champion": champion,
        "comparable_with_production": {"comparable": comparable, "reason": why} if current else None,
    }
    storage.write_bytes(storage.join(folder, "report.md"), report.markdown().encode())
    storage.write_bytes(storage.join(folder, "report.json"), json.dumps(document, indent=2).encode())
    png = confusion_png(report.confusion_labels, np.asarray(report.confusion))
    storage.write_bytes(storage.join(folder, "confusion.png"), png)
    bars = per_label_f1_png(report.entity["per_label"])
    storage.write_bytes(storage.join(folder, "per_label_f1.png"), bars)
    detail_files = write_details(folder, report.details)

    headline = report.headline()
    previous = context.instance.get_latest_materialization_event(context.asset_key)
    change = {}
    if previous and previous.asset_materialization:
        before = previous.asset_materialization.metadata.get("entity_f1")
        if before is not None:
            change["entity_f1_change"] = headline["entity_f1"] - float(before.value)
    context.log.info(f"evaluation of {layoutlm_checkpoint['path']}: {json.dumps(headline)}")
    return dg.Output(
        {**document, "report_folder": folder, "dagster_run_id": context.run.run_id},
        # the same checkpoint scored on the same windows gives the same report
        data_version=dg.DataVersion(_digest(report.to_dict())),
        metadata={
            **headline,
            **change,
            # the pictures inline, so the UI shows them where the report is read
            "report": dg.MetadataValue.md(
                report.markdown()
                + "\n"
                + embedded_png("per-label F1", bars)
                + "\n\n"
                + embedded_png("confusion matrix", png)
                + "\n"
            ),
            **{name: dg.MetadataValue.path(uri) for name, uri in detail_files.items()},
            "slices": dg.MetadataValue.json(report.slices),
            **(
                {
                    "table_fields": dg.MetadataValue.json(report.table["fields"]),
                    "line_items": dg.MetadataValue.json(report.table["line_items"] or {}),
                }
                if report.table
                else {}
            ),
            "product_details": dg.MetadataValue.json(report.product_details),
            **({"train_sample": dg.MetadataValue.json(report.train_sample)} if report.train_sample else {}),
            "report_folder": dg.MetadataValue.path(folder),
            "confusion_matrix": dg.MetadataValue.path(storage.join(folder, "confusion.png")),
            "checkpoint": dg.MetadataValue.path(layoutlm_checkpoint["path"]),
            "checkpoint_run": layoutlm_checkpoint["run"],
            "checkpoint_version": layoutlm_checkpoint.get("version", ""),
            "receipts": report.receipts,
            "windows": report.windows,
            "test_keys_sha256": basis["keys_sha256"],
            "split_strategy": basis["strategy"],
            **(
                {
                    "production_f1_on_these_receipts": champion["entity_f1"],
                    "comparable_with_production_report": comparable,
                    "comparability": why,
                }
                if champion
                else {}
            ),
        },
    )


@dg.asset_check(
    asset="evaluation_report",
    name=CHECK_F1,
    blocking=True,
    description="The candidate against the production model, both scored on the report's test receipts: passes "
    "when the 95% paired-bootstrap interval of candidate minus production entity F1 has its lower bound above "
    "-RECEIPT_PIPELINE_PROMOTION_TOLERANCE and no label (support >= 20) drops by more than "
    "RECEIPT_PIPELINE_PROMOTION_MAX_LABEL_DROP; blocks production_model when it fails.",
)
def f1_not_below_production(settings: PipelineSettings, evaluation_report: dict) -> dg.AssetCheckResult:
    decision = promotion_decision(settings, evaluation_report)
    return dg.AssetCheckResult(
        passed=decision.passed,
        description=decision.reason,
        metadata={
            "candidate_f1": decision.candidate_f1,
            "production_f1": decision.production_f1 if decision.production_f1 is not None else float("nan"),
            "difference": decision.difference if decision.difference is not None else float("nan"),
            "interval_95_low": decision.interval[0] if decision.interval else float("nan"),
            "interval_95_high": decision.interval[1] if decision.interval else float("nan"),
            "receipts_compared": decision.receipts,
            "labels_compared": dg.MetadataValue.json(decision.labels_compared),
            "label_deltas": dg.MetadataValue.json(decision.label_deltas),
            "max_label_drop": decision.max_label_drop,
            "tolerance": decision.tolerance,
            "checkpoint_version": evaluation_report.get("checkpoint", {}).get("version", ""),
            **gate_figures(evaluation_report),
        },
    )


GATE_FIGURES = ("table_field_f1", "line_item_f1", "product_detail_macro_f1", "train_test_entity_f1_gap")


def gate_figures(report: dict) -> dict[str, float]:
    """The figures beside entity F1 for both models, on the same test receipts (a gap each on its own training
    receipts): NaN where a model has none (no table receipts, no item labels, a gap not recorded)."""
    production = (report.get("champion") or {}).get("figures", {})
    figures = {}
    for name in GATE_FIGURES:
        figures[f"candidate_{name}"] = float(report[name]) if report.get(name) is not None else float("nan")
        figures[f"production_{name}"] = float(production[name]) if production.get(name) is not None else float("nan")
    return figures
