"""Deployment settings read from the environment: ``local`` (the default) or ``prod``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL_TABLE = "receipts"
LOCAL_BUCKET = "receipt-pipeline-local"
DEPLOYMENTS = ("local", "prod")


class SettingsError(RuntimeError):
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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DeploymentSettings:
        env = os.environ if environ is None else environ
        deployment = env.get("RECEIPT_PIPELINE_DEPLOYMENT", "local")
        if deployment not in DEPLOYMENTS:
            raise SettingsError(f"RECEIPT_PIPELINE_DEPLOYMENT={deployment!r}: expected one of {', '.join(DEPLOYMENTS)}")
        sroie_dir = env.get("SROIE_DIR") or None
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
        )
