"""Resources, chosen per deployment from :class:`DeploymentSettings`."""

from __future__ import annotations

import io
import json

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from receipt_pipeline.core import storage
from receipt_pipeline.core.promotion import production_root
from receipt_pipeline.core.settings import DeploymentSettings, SettingsError, environment


class PipelineSettings(dg.ConfigurableResource):
    """Where this deployment reads receipts from and keeps its artifacts."""

    deployment: str
    receipts_table: str
    bucket: str
    artifact_root: str
    sroie_dir: str | None = None
    base_model: str = "compact"
    max_train_minutes: float | None = None
    promotion_tolerance: float = 0.01
    promotion_max_label_drop: float = 0.05
    allow_label_change: bool = False
    # the sweeps' Optuna study database (an SQLAlchemy URL); None in prod until RECEIPT_PIPELINE_OPTUNA_STORAGE is set
    optuna_storage: str | None = None
    # receipt_predictions' default for writing label proposals to the table (its config can override it)
    write_proposals: bool = False
    # how the table's receipts print numeric dates (RECEIPT_PIPELINE_TABLE_DATE_ORDER): MDY, or DMY
    table_date_order: str = "MDY"

    @property
    def production_model_root(self) -> str:
        """Where the production model lives: s3://<bucket>/models/production in prod, a folder locally."""
        return production_root(self.artifact_root)

    @classmethod
    def from_deployment(cls, settings: DeploymentSettings) -> PipelineSettings:
        return cls(
            deployment=settings.deployment,
            receipts_table=settings.receipts_table,
            bucket=settings.bucket,
            artifact_root=settings.artifact_root,
            sroie_dir=settings.sroie_dir,
            base_model=settings.base_model,
            max_train_minutes=settings.max_train_minutes,
            promotion_tolerance=settings.promotion_tolerance,
            promotion_max_label_drop=settings.promotion_max_label_drop,
            allow_label_change=settings.allow_label_change,
            optuna_storage=settings.optuna_storage,
            write_proposals=settings.write_proposals,
            table_date_order=settings.table_date_order,
        )

    def require_aws(self) -> None:
        """The local deployment must never fall through to real AWS with whatever credentials are about."""
        if self.deployment == "local" and not environment().AWS_ENDPOINT_URL:
            raise SettingsError(
                "the local deployment talks to the local AWS emulator, but AWS_ENDPOINT_URL is not set: "
                "run `receipt-pipeline local-aws --port 5466` and export AWS_ENDPOINT_URL=http://127.0.0.1:5466 "
                "(`make dev` and `make demo` do both)"
            )


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames and Arrow tables as parquet and dicts as JSON under ``root`` (a folder or ``s3://`` prefix).

    Parquet loads as what was stored (a DataFrame or an Arrow table, schema metadata kept) unless the
    input is annotated otherwise; an input annotated ``ParquetArtifact`` gets a handle to stream it, which is
    given whether or not the file exists, so an asset can leave an input it does not need unread.

    Never pickles: what is read back from S3 is data, not code. Writes are atomic (see core.storage).
    """

    root: str

    def _uri(self, context: dg.OutputContext | dg.InputContext, suffix: str) -> str:
        """<root>/assets/<key path>[/<partition>].<suffix>: one file per partition of a partitioned asset."""
        parts = list(context.asset_key.path)
        if context.has_asset_partitions:
            parts.append(context.asset_partition_key)
        return storage.join(self.root, "assets", *parts) + suffix

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        if isinstance(obj, (pd.DataFrame, pa.Table)):
            uri = self._uri(context, ".parquet")
            buffer = io.BytesIO()
            if isinstance(obj, pa.Table):
                pq.write_table(obj, buffer, row_group_size=10_000)  # streamable by row group
            else:
                obj.to_parquet(buffer, index=False)
            storage.write_bytes(uri, buffer.getvalue())
        elif isinstance(obj, dict):
            uri = self._uri(context, ".json")
            storage.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: cannot store a {type(obj).__name__}")
        context.add_output_metadata({"stored_at": dg.MetadataValue.path(uri)})

    def load_input(self, context: dg.InputContext) -> object:
        parquet = self._uri(context, ".parquet")
        wanted = context.dagster_type.typing_type
        if wanted is storage.ParquetArtifact:
            # a handle, read (or not) by the asset: an input it does not need need not exist
            return storage.ParquetArtifact(parquet)
        if storage.exists(parquet):
            data = io.BytesIO(storage.read_bytes(parquet))
            # unannotated (load_asset_value): what was stored comes back; pandas marks its own files
            stored_by_pandas = b"pandas" in (pq.read_schema(data).metadata or {})
            data.seek(0)
            if wanted is pa.Table or (wanted is not pd.DataFrame and not stored_by_pandas):
                return pq.read_table(data)
            return pd.read_parquet(data)
        document = self._uri(context, ".json")
        if storage.exists(document):
            return json.loads(storage.read_bytes(document))
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} has not been materialised: nothing at {parquet} or {document}"
        )


def resources_for(settings: DeploymentSettings) -> dict[str, object]:
    return {
        "settings": PipelineSettings.from_deployment(settings),
        "io_manager": ArtifactIOManager(root=settings.artifact_root),
    }
