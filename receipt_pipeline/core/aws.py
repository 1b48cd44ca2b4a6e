"""boto3 clients configured the one way this project uses them.

Region, endpoint and credentials come only from the standard places (AWS_REGION, AWS_ENDPOINT_URL,
profiles, instance roles): botocore reads them itself, so nothing here takes an endpoint argument.
"""

from __future__ import annotations

import boto3
from botocore.config import Config

# Adaptive mode adds client-side rate limiting on top of exponential backoff, which is what a
# read burst against an on-demand table that is still scaling needs.
DEFAULT_MAX_ATTEMPTS = 10


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_pool_connections: int = 32) -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
    )


def client(service: str, *, session: boto3.session.Session | None = None, **config_kwargs):
    session = session or boto3.session.Session()
    return session.client(service, config=client_config(**config_kwargs))


def resource(service: str, *, session: boto3.session.Session | None = None, **config_kwargs):
    session = session or boto3.session.Session()
    return session.resource(service, config=client_config(**config_kwargs))
