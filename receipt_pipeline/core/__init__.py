"""Plain-Python logic of the pipeline. Nothing in this package imports dagster."""
