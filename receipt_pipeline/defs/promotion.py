"""The production model: promoted from the checkpoint its report scored, behind a blocking F1 check."""

import dagster as dg

from receipt_pipeline.core import promotion, storage
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "promotion"
# what production.json records of the report that promoted the model; a later gate reads its gap from here
PROMOTED_SCORES = (
    "entity_f1", "field_f1", "table_field_f1", "line_item_f1", "product_detail_macro_f1", "train_test_entity_f1_gap",
)  # fmt: skip


def promotion_decision(settings: PipelineSettings, report: dict) -> promotion.PairedDecision:
    """Whether the report's checkpoint may replace the production model: both scored on the report's receipts."""
    current = promotion.current_production(settings.production_model_root)
    champion = report.get("champion")
    if current is not None:
        version = current.get("checkpoint", {}).get("version", "")
        if not champion or champion.get("version") != version:
            scored = champion.get("version") if champion else None
            return promotion.PairedDecision.refused(
                f"the report scored production model {scored!r} beside the candidate, but production is now "
                f"{version!r}: materialise evaluation_report again",
                float(report[promotion.METRIC]),
                report.get("receipts", 0),
                settings.promotion_tolerance,
                settings.promotion_max_label_drop,
            )
    return promotion.decide_paired(
        report.get("receipt_counts", {}),
        report.get("labels", []),
        champion if current is not None else None,
        settings.promotion_tolerance,
        max_label_drop=settings.promotion_max_label_drop,
        allow_label_change=settings.allow_label_change,
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"s3", "huggingface"},
    description="The model in production: the checkpoint copied to models/production (S3 in prod, a folder "
    "locally) when its F1 passes f1_not_below_production, with production.json naming its run, data and report.",
)
def production_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    layoutlm_checkpoint: dict,
    evaluation_report: dict,
) -> dg.Output[dict]:
    scored = evaluation_report.get("checkpoint", {}).get("version")
    if scored != layoutlm_checkpoint["version"]:
        raise dg.Failure(
            f"the evaluation report scored checkpoint {scored!r}, not {layoutlm_checkpoint['version']!r} "
            f"({layoutlm_checkpoint['path']}): materialise evaluation_report first"
        )
    # the blocking check stops this asset in the run that scored the model; this covers a run without the check
    decision = promotion_decision(settings, evaluation_report)
    if not decision.passed:
        raise dg.Failure(f"not promoted: {decision.reason}")
    root = settings.production_model_root
    report_folder = evaluation_report["report_folder"]
    manifest = promotion.promote(
        layoutlm_checkpoint["path"],
        root,
        {
            "checkpoint": evaluation_report["checkpoint"],
            "scores": {name: evaluation_report.get(name) for name in PROMOTED_SCORES},
            "basis": evaluation_report.get("basis"),
            "labels": evaluation_report.get("labels", []),
            "report": {"folder": report_folder, "dagster_run_id": evaluation_report.get("dagster_run_id", "")},
            "previous": decision.production_f1,
            "promoted_by_dagster_run_id": context.run.run_id,
        },
    )
    context.log.info(f"promoted {layoutlm_checkpoint['path']} to {root}: {decision.reason}")
    checkpoint = evaluation_report["checkpoint"]
    table = checkpoint.get("source_snapshots", {}).get("dynamo")
    links = {
        "training_run": dg.MetadataValue.dagster_run(checkpoint["dagster_run_id"])
        if checkpoint.get("dagster_run_id")
        else "",
        "report_run": dg.MetadataValue.dagster_run(evaluation_report["dagster_run_id"])
        if evaluation_report.get("dagster_run_id")
        else "",
    }
    return dg.Output(
        {**manifest, "path": root},
        data_version=dg.DataVersion(layoutlm_checkpoint["version"]),
        metadata={
            "path": dg.MetadataValue.path(root),
            "checkpoint": dg.MetadataValue.path(layoutlm_checkpoint["path"]),
            "checkpoint_version": layoutlm_checkpoint["version"],
            **{name: value for name, value in links.items() if value},
            "report": dg.MetadataValue.path(storage.join(report_folder, "report.md")),
            "entity_f1": float(evaluation_report["entity_f1"]),
            **({"field_f1": float(field_f1)} if (field_f1 := evaluation_report.get("field_f1")) is not None else {}),
            "previous_production_f1_on_these_receipts": decision.production_f1
            if decision.production_f1 is not None
            else float("nan"),
            "tolerance": decision.tolerance,
            "promotion": dg.MetadataValue.json(decision.metadata()),
            "windowed_tensors_version": checkpoint.get("windowed_tensors_version", ""),
            "bio_receipt_split_version": checkpoint.get("bio_receipt_split_version", ""),
            **(
                {"table_valid_labels": table["labels"], "table_newest_valid_label": table["newest_timestamp"]}
                if table
                else {}
            ),
        },
    )
