"""Receipt words from DynamoDB and SROIE to a trained LayoutLM token classifier, orchestrated by Dagster."""

__version__ = "0.1.0"
