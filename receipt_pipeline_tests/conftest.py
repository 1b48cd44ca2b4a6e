"""Shared fixtures: one local AWS emulator over real HTTP per test session, fresh tables per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receipt_pipeline.core import aws, local_aws

SHARED_SROIE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sroie"


@pytest.fixture(scope="session")
def aws_emulator():
    """The emulator's environment (AWS_ENDPOINT_URL and throwaway credentials), set for the whole session."""
    with local_aws.running_emulator() as env:
        yield env


@pytest.fixture
def receipts_table(aws_emulator) -> str:
    """A new, empty receipts table with the production keys and indexes; deleted after the test."""
    name = f"receipts-{uuid.uuid4().hex[:8]}"
    client = aws.client("dynamodb")  # made now: a test may point the environment elsewhere meanwhile
    local_aws.create_receipts_table(name)
    yield name
    client.delete_table(TableName=name)


@contextlib.contextmanager
def seeded_receipts_table(receipts: int, seed: int) -> Iterator[str]:
    """A new receipts table holding ``receipts`` synthetic receipts; deleted afterwards. Needs the emulator."""
    from receipt_pipeline.core.synthetic import seed_synthetic

    name = f"receipts-seeded-{uuid.uuid4().hex[:8]}"
    client = aws.client("dynamodb")
    local_aws.create_receipts_table(name)
    seed_synthetic(name, receipts, seed=seed)
    try:
        yield name
    finally:
        client.delete_table(TableName=name)


def delete_bucket(name: str) -> None:
    """Deletes a bucket and every version in it: the emulator keeps each object over 5 MB in a file in /tmp."""
    s3 = aws.client("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
        if versions:
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
            s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def artifacts_bucket(aws_emulator) -> Iterator[str]:
    """A new, empty bucket; deleted with its objects after the test."""
    name = f"artifacts-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=name)
    yield name
    delete_bucket(name)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """``tmp_path_factory.mktemp`` for a module's shared fixtures; what it made is removed when the module is done.

    A training run leaves several hundred MB of checkpoints, and pytest keeps every folder until the session ends.
    """
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def prod_stack(aws_emulator):
    """deploy/cloudformation/receipt-pipeline.yaml deployed once into the emulator (see emulated_stack.py)."""
    from receipt_pipeline_tests import emulated_stack

    return emulated_stack.deploy()


@pytest.fixture(scope="session")
def small_production_model(tmp_path_factory) -> Path:
    """A production model folder of a small model trained once a session (see training_data.py)."""
    from receipt_pipeline_tests.training_data import small_production_model

    return small_production_model(tmp_path_factory)


@pytest.fixture(scope="session")
def shared_sroie_dir() -> Path:
    if not (SHARED_SROIE / "train" / "box").is_dir():
        pytest.fail(f"the shared SROIE training split is missing at {SHARED_SROIE}")
    return SHARED_SROIE


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch):
    # A test that forgot the emulator must never reach real AWS with whatever is in the environment.
    if "AWS_ENDPOINT_URL" not in os.environ:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        for name, value in local_aws.EMULATOR_ENV.items():
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
