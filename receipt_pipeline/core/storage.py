"""Reading and writing artifacts at a local path or an ``s3://`` URI.

Writes are atomic: a local file is written beside its target and renamed into place, an S3 object
appears whole when its PUT completes. A crash mid-write therefore never leaves a partial artifact
that a later step would load.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from receipt_pipeline.core import aws
from receipt_pipeline.core.settings import variable


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, region: str | None, profile: str | None):
    # one client per AWS environment: building a client costs milliseconds, reading a folder of
    # small objects calls this once per object
    return aws.client("s3")


def _s3():
    # called once per object: three variables, not the whole environment's validation
    return _s3_client(*(variable(name) for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE")))


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


def delete(uri: str) -> None:
    """Remove one file or object; nothing to remove is fine."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3().delete_object(Bucket=bucket, Key=key)
        return
    Path(uri).unlink(missing_ok=True)


def copy(source: str, target: str) -> None:
    """Copy one file or object; S3 to S3 is a server-side (multipart for large objects) copy."""
    if is_s3(source) and is_s3(target):
        source_bucket, source_key = split_s3(source)
        bucket, key = split_s3(target)
        _s3().copy({"Bucket": source_bucket, "Key": source_key}, bucket, key)
        return
    write_bytes(target, read_bytes(source))


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = _s3()
        try:
            client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True
    return Path(uri).exists()


def s3_etags(prefix: str) -> dict[str, str]:
    """Every object under an S3 prefix, as its full URI, with its ETag (which changes with its content), sorted."""
    bucket, key_prefix = split_s3(prefix)
    key_prefix = key_prefix.rstrip("/") + "/" if key_prefix else ""
    paginator = _s3().get_paginator("list_objects_v2")
    objects = {
        obj["Key"]: obj["ETag"]
        for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix)
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")
    }
    return {f"s3://{bucket}/{key}": objects[key] for key in sorted(objects)}


def list_files(prefix: str) -> Iterator[str]:
    """Every file under a folder or S3 prefix, as full URIs/paths, sorted."""
    if is_s3(prefix):
        yield from s3_etags(prefix)
        return
    root = Path(prefix)
    if root.is_dir():
        yield from (str(p) for p in sorted(root.rglob("*")) if p.is_file())


def is_dir(uri: str) -> bool:
    if is_s3(uri):
        return next(list_files(uri), None) is not None
    return Path(uri).is_dir()


@dataclass(frozen=True)
class ParquetArtifact:
    """A parquet file at a local path or ``s3://`` URI, read lazily so a large one streams in batches, or not at
    all: the file need not exist until it is read."""

    uri: str

    def exists(self) -> bool:
        return exists(self.uri)

    def read_pandas(self):
        """The whole file as a DataFrame, with the ``attrs`` pandas kept in it."""
        import io

        import pandas as pd

        return pd.read_parquet(io.BytesIO(read_bytes(self.uri)))

    @contextlib.contextmanager
    def open(self) -> Iterator:
        import pyarrow.parquet as pq

        # memory-mapped: pyarrow otherwise keeps every column chunk it has read until the file closes
        if not is_s3(self.uri):
            yield pq.ParquetFile(self.uri, memory_map=True)
            return
        # a local copy: random access for the parquet footer without holding the file in memory
        bucket, key = split_s3(self.uri)
        with tempfile.NamedTemporaryFile(suffix=".parquet") as handle:
            _s3().download_fileobj(bucket, key, handle)
            handle.flush()
            yield pq.ParquetFile(handle.name, memory_map=True)

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator:
        with self.open() as parquet:
            yield from parquet.iter_batches(batch_size=batch_size, columns=columns)

    def schema_metadata(self) -> dict[bytes, bytes]:
        with self.open() as parquet:
            return dict(parquet.schema_arrow.metadata or {})

    def read(self):
        with self.open() as parquet:
            return parquet.read()
