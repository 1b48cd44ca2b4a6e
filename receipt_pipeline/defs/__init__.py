"""The Dagster layer: assets, checks, jobs, schedules and sensors, grouped by domain. Logic lives in core."""
