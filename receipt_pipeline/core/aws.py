"""boto3 clients configured the one way this project uses them.

Region, endpoint and credentials come only from the standard places (AWS_REGION, AWS_ENDPOINT_URL,
profiles, instance roles): botocore reads them itself, so nothing here takes an endpoint argument.
"""

from __future__ import annotations

import boto3
from botocore.config import Config

from receipt_pipeline.core.settings import environment

# Adaptive mode adds client-side rate limiting on top of exponential backoff, which is what a
# read burst against an on-demand table that is still scaling needs.
DEFAULT_MAX_ATTEMPTS = 10


def client_config(
    max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_pool_connections: int = 32, parameter_validation: bool = True
) -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        parameter_validation=parameter_validation,
    )


def session() -> boto3.session.Session:
    # botocore reads AWS_DEFAULT_REGION but not AWS_REGION, which the other AWS SDKs and the AWS CLI v2 use
    return boto3.session.Session(region_name=environment().AWS_REGION)


def client(service: str, **config_kwargs):
    return session().client(service, config=client_config(**config_kwargs))


def resource(service: str, **config_kwargs):
    return session().resource(service, config=client_config(**config_kwargs))
