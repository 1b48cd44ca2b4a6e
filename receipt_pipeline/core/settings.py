"""Every environment variable the pipeline reads, read here and nowhere else (pydantic-settings), and the
deployment's settings made from them: ``local`` (the default) or ``prod``.

A malformed value is refused with the variable's name. Variables that change while a process runs (the AWS
endpoint a test points elsewhere, the rank torchrun gives a process) are read afresh at each call of
:func:`environment`; nothing caches them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from receipt_pipeline.core.errors import ExplainedError

LOCAL_TABLE = "receipts"
LOCAL_BUCKET = "receipt-pipeline-local"
DEPLOYMENTS = ("local", "prod")
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
DEFAULT_RETRAIN_MIN_NEW_LABELS = 500
DEFAULT_PROMOTION_TOLERANCE = 0.01
DEFAULT_PROMOTION_MAX_LABEL_DROP = 0.05
LOCAL_MAX_TRAIN_MINUTES = 2.5
PROD_BASE_MODEL = "microsoft/layoutlm-base-uncased"


class SettingsError(ExplainedError, RuntimeError):
    pass


class Variables(BaseModel):
    """The variables, by their own names, validated: from a mapping given (a test's, a child's environment)."""

    model_config = ConfigDict(extra="ignore")

    # the deployment
    RECEIPT_PIPELINE_DEPLOYMENT: str = "local"
    RECEIPTS_TABLE: str | None = None
    RECEIPT_PIPELINE_BUCKET: str | None = None
    RECEIPT_PIPELINE_DATA_DIR: str = ".data"
    SROIE_DIR: str | None = None
    RECEIPT_PIPELINE_BASE_MODEL: str | None = None
    RECEIPT_PIPELINE_MAX_TRAIN_MINUTES: NonNegativeFloat | None = None
    RECEIPT_PIPELINE_OPTUNA_STORAGE: str | None = None
    RECEIPT_PIPELINE_RETRAIN_CRON: str = DEFAULT_RETRAIN_CRON
    RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS: NonNegativeInt = DEFAULT_RETRAIN_MIN_NEW_LABELS
    RECEIPT_PIPELINE_PROMOTION_TOLERANCE: NonNegativeFloat = DEFAULT_PROMOTION_TOLERANCE
    RECEIPT_PIPELINE_PROMOTION_MAX_LABEL_DROP: NonNegativeFloat = DEFAULT_PROMOTION_MAX_LABEL_DROP
    RECEIPT_PIPELINE_ALLOW_LABEL_CHANGE: bool = False
    RECEIPT_PIPELINE_WRITE_PROPOSALS: bool | None = None
    # how the table's receipts print numeric dates: month first (MDY, the users' US receipts) or day first (DMY)
    RECEIPT_PIPELINE_TABLE_DATE_ORDER: Literal["MDY", "DMY"] = "MDY"
    # where things go on this machine
    RECEIPT_PIPELINE_SCRATCH: str | None = None  # local copies of runs whose folders live in S3
    # models fetched from S3, a copy per content of a prefix; older copies are pruned after an hour unserved
    RECEIPT_PIPELINE_MODEL_CACHE: str | None = None
    DAGSTER_HOME: str | None = None
    # AWS, as the SDKs read them (botocore reads them itself; these are what the pipeline checks or keys on)
    AWS_ENDPOINT_URL: str | None = None
    AWS_REGION: str | None = None
    AWS_PROFILE: str | None = None
    # the instance metadata service, which tests point at a stand-in
    AWS_EC2_METADATA_SERVICE_ENDPOINT: str | None = None
    # this process's place under torchrun
    RANK: NonNegativeInt = 0


class Environment(Variables, BaseSettings):
    """The same variables, read from this process's environment. An empty value counts as unset."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True)


def environment(values: Mapping[str, str] | None = None) -> Variables:
    """The variables of this process now, or of ``values`` alone; a malformed one raises :class:`SettingsError`."""
    try:
        if values is None:
            return Environment()
        return Variables.model_validate({name: value for name, value in values.items() if value != ""})
    except ValidationError as error:
        problem = error.errors()[0]
        name = str(problem["loc"][0])
        message = problem["msg"][:1].lower() + problem["msg"][1:]  # the values it quotes keep their case
        raise SettingsError(f"{name}={problem.get('input')!r}: {message}") from None


def variables() -> dict[str, str]:
    """A copy of this process's whole environment: what a child process it starts inherits."""
    return dict(os.environ)


def set_variables(values: Mapping[str, str]) -> None:
    """Sets variables for this process and the children it starts (the emulator's endpoint, DAGSTER_HOME)."""
    os.environ.update(values)


def unset_variables(names) -> None:
    for name in names:
        os.environ.pop(name, None)


def variable(name: str) -> str | None:
    """One variable by name, for the launcher's ``env_vars``, which copies variables the config names."""
    return os.environ.get(name)


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
    # how far one label's F1 (with enough support) may fall, and whether a model with another label set may replace it
    promotion_max_label_drop: float = DEFAULT_PROMOTION_MAX_LABEL_DROP
    allow_label_change: bool = False
    # the sweeps' Optuna study: SQLite beside the artifacts locally; the prod Postgres (a URL with its
    # password, so from the environment or a secret, never from config files)
    optuna_storage: str | None = None
    # whether receipt_predictions writes its labels to the table as PENDING proposals: on for the local
    # emulator's table, off in prod unless RECEIPT_PIPELINE_WRITE_PROPOSALS says so (it needs a write policy)
    write_proposals: bool = False
    # the order the table's receipts print a numeric date's month and day in (SROIE's are always day first)
    table_date_order: str = "MDY"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DeploymentSettings:
        """The deployment's settings from this process's environment, or from ``environ`` alone."""
        env = environment(environ)
        deployment = env.RECEIPT_PIPELINE_DEPLOYMENT
        if deployment not in DEPLOYMENTS:
            raise SettingsError(f"RECEIPT_PIPELINE_DEPLOYMENT={deployment!r}: expected one of {', '.join(DEPLOYMENTS)}")
        cron = env.RECEIPT_PIPELINE_RETRAIN_CRON
        if len(cron.split()) != 5:
            raise SettingsError(f"RECEIPT_PIPELINE_RETRAIN_CRON={cron!r}: expected five cron fields")
        common = {
            "deployment": deployment,
            "sroie_dir": env.SROIE_DIR,
            "retrain_cron": cron,
            "retrain_min_new_labels": env.RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS,
            "promotion_tolerance": env.RECEIPT_PIPELINE_PROMOTION_TOLERANCE,
            "promotion_max_label_drop": env.RECEIPT_PIPELINE_PROMOTION_MAX_LABEL_DROP,
            "allow_label_change": env.RECEIPT_PIPELINE_ALLOW_LABEL_CHANGE,
            "table_date_order": env.RECEIPT_PIPELINE_TABLE_DATE_ORDER,
        }
        if deployment == "local":
            data_dir = Path(env.RECEIPT_PIPELINE_DATA_DIR).expanduser().resolve()
            minutes = env.RECEIPT_PIPELINE_MAX_TRAIN_MINUTES
            return cls(
                receipts_table=env.RECEIPTS_TABLE or LOCAL_TABLE,
                bucket=env.RECEIPT_PIPELINE_BUCKET or LOCAL_BUCKET,
                artifact_root=str(data_dir),
                # CPU runs: the compact model ships with a package, no download needed
                base_model=env.RECEIPT_PIPELINE_BASE_MODEL or "compact",
                max_train_minutes=LOCAL_MAX_TRAIN_MINUTES if minutes is None else minutes,
                optuna_storage=env.RECEIPT_PIPELINE_OPTUNA_STORAGE or f"sqlite:///{data_dir / 'optuna.sqlite'}",
                write_proposals=env.RECEIPT_PIPELINE_WRITE_PROPOSALS is not False,
                **common,
            )
        missing = [name for name in ("RECEIPTS_TABLE", "RECEIPT_PIPELINE_BUCKET") if not getattr(env, name)]
        if missing:
            raise SettingsError(f"the prod deployment needs {' and '.join(missing)} set in the environment")
        return cls(
            receipts_table=env.RECEIPTS_TABLE,
            bucket=env.RECEIPT_PIPELINE_BUCKET,
            artifact_root=f"s3://{env.RECEIPT_PIPELINE_BUCKET}",
            base_model=env.RECEIPT_PIPELINE_BASE_MODEL or PROD_BASE_MODEL,
            max_train_minutes=env.RECEIPT_PIPELINE_MAX_TRAIN_MINUTES,
            optuna_storage=env.RECEIPT_PIPELINE_OPTUNA_STORAGE,
            write_proposals=bool(env.RECEIPT_PIPELINE_WRITE_PROPOSALS),
            **common,
        )
