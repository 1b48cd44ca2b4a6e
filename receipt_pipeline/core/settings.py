"""Deployment settings read from the environment: ``local`` (the default) or ``prod``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from receipt_pipeline.core.errors import ExplainedError

LOCAL_TABLE = "receipts"
LOCAL_BUCKET = "receipt-pipeline-local"
DEPLOYMENTS = ("local", "prod")
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
DEFAULT_RETRAIN_MIN_NEW_LABELS = 500
DEFAULT_PROMOTION_TOLERANCE = 0.01
LOCAL_MAX_TRAIN_MINUTES = 2.5


class SettingsError(ExplainedError, RuntimeError):
    pass


@dataclass(frozen=True)
class DeploymentSettings:
    deployment: str
    receipts_table: str
    bucket: str
    # where artifacts live: a local folder (local) or s3://bucket (prod)
    artifact_root: str
    sroie_dir: str | None
    # the base model (and tokenizer) when a run's config names none: see core.base_model
    base_model: str = "compact"
    # a training run's time budget when its config sets none: CPU runs are budgeted, GPU runs are not
    max_train_minutes: float | None = None
    # retraining: a cron for the scheduled retrain, and how many new VALID labels trigger one sooner
    retrain_cron: str = DEFAULT_RETRAIN_CRON
    retrain_min_new_labels: int = DEFAULT_RETRAIN_MIN_NEW_LABELS
    # promotion: how much lower than the production model's F1 a new model's may be
    promotion_tolerance: float = DEFAULT_PROMOTION_TOLERANCE
    # the sweeps' Optuna study: SQLite beside the artifacts locally; the prod Postgres (a URL with its
    # password, so from the environment or a secret, never from config files)
    optuna_storage: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DeploymentSettings:
        env = os.environ if environ is None else environ
        deployment = env.get("RECEIPT_PIPELINE_DEPLOYMENT", "local")
        if deployment not in DEPLOYMENTS:
            raise SettingsError(f"RECEIPT_PIPELINE_DEPLOYMENT={deployment!r}: expected one of {', '.join(DEPLOYMENTS)}")
        sroie_dir = env.get("SROIE_DIR") or None
        common = _common_settings(env)
        if deployment == "local":
            data_dir = Path(env.get("RECEIPT_PIPELINE_DATA_DIR", ".data")).expanduser().resolve()
            return cls(
                deployment=deployment,
                receipts_table=env.get("RECEIPTS_TABLE", LOCAL_TABLE),
                bucket=env.get("RECEIPT_PIPELINE_BUCKET", LOCAL_BUCKET),
                artifact_root=str(data_dir),
                sroie_dir=sroie_dir,
                # CPU runs: the compact model ships with a package, no download needed
                base_model=env.get("RECEIPT_PIPELINE_BASE_MODEL", "compact"),
                max_train_minutes=_number(env, "RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", float, LOCAL_MAX_TRAIN_MINUTES),
                optuna_storage=env.get("RECEIPT_PIPELINE_OPTUNA_STORAGE") or f"sqlite:///{data_dir / 'optuna.sqlite'}",
                **common,
            )
        missing = [name for name in ("RECEIPTS_TABLE", "RECEIPT_PIPELINE_BUCKET") if not env.get(name)]
        if missing:
            raise SettingsError(f"the prod deployment needs {' and '.join(missing)} set in the environment")
        return cls(
            deployment=deployment,
            receipts_table=env["RECEIPTS_TABLE"],
            bucket=env["RECEIPT_PIPELINE_BUCKET"],
            artifact_root=f"s3://{env['RECEIPT_PIPELINE_BUCKET']}",
            sroie_dir=sroie_dir,
            base_model=env.get("RECEIPT_PIPELINE_BASE_MODEL", "microsoft/layoutlm-base-uncased"),
            max_train_minutes=_number(env, "RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", float, None),
            optuna_storage=env.get("RECEIPT_PIPELINE_OPTUNA_STORAGE") or None,
            **common,
        )


def _number(env, name: str, kind: type, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a {kind.__name__}") from None
    if value < 0:
        raise SettingsError(f"{name}={raw!r}: must not be negative")
    return value


def _common_settings(env) -> dict:
    cron = env.get("RECEIPT_PIPELINE_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON
    if len(cron.split()) != 5:
        raise SettingsError(f"RECEIPT_PIPELINE_RETRAIN_CRON={cron!r}: expected five cron fields")
    return {
        "retrain_cron": cron,
        "retrain_min_new_labels": _number(
            env, "RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS", int, DEFAULT_RETRAIN_MIN_NEW_LABELS
        ),
        "promotion_tolerance": _number(env, "RECEIPT_PIPELINE_PROMOTION_TOLERANCE", float, DEFAULT_PROMOTION_TOLERANCE),
    }
