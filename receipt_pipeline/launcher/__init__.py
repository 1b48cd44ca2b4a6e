"""The EC2 GPU run launcher (``dagster.yaml``: ``module: receipt_pipeline.launcher``, ``class: EC2GpuRunLauncher``)
and the bootstrap its instances run."""

from receipt_pipeline.launcher.run_launcher import EC2GpuRunLauncher

__all__ = ["EC2GpuRunLauncher"]
