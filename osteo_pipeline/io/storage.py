"""Pull an incoming labeled batch from S3 (``s3://bucket/prefix/<class>/<file>``) into a local
staging folder, verifying every object's checksum, so a scheduled run can take its data from S3.

Endpoint and credentials come only from the standard environment (``AWS_*``,
``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``): never from config, never logged."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from osteo_pipeline.errors import OsteoError


class StorageError(OsteoError, RuntimeError):
    """An object could not be fetched intact; the message names it."""


@dataclass
class PullResult:
    local_dir: Path
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


S3_ATTEMPTS = 4  # botocore "standard" retries: exponential backoff with jitter, capped


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")


def s3_client():  # noqa: ANN201
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=_endpoint(), config=config)


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3://bucket/prefix URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/").rstrip("/")


def _verify(path: Path, head: dict, key: str) -> None:
    data = path.read_bytes()
    if "ChecksumSHA256" in head:
        if base64.b64encode(hashlib.sha256(data).digest()).decode() != head["ChecksumSHA256"]:
            raise StorageError(f"s3 object {key}: sha256 mismatch after download")
        return
    etag = head.get("ETag", "").strip('"')
    if etag and "-" not in etag and hashlib.md5(data).hexdigest() != etag:  # noqa: S324 - S3's ETag is MD5
        raise StorageError(f"s3 object {key}: MD5 (ETag) mismatch after download")
    if head.get("ContentLength") is not None and head["ContentLength"] != len(data):
        raise StorageError(
            f"s3 object {key}: {len(data)} bytes downloaded, {head['ContentLength']} expected"
        )


def pull_batch(uri: str, staging: Path, client=None) -> PullResult:  # noqa: ANN001
    """Mirror ``uri``'s ``<class>/<file>`` objects into ``staging`` (downloaded to a temporary name,
    verified, then renamed: a failed pull never leaves a half file looking whole). An unreachable
    endpoint fails after the bounded retries with a :class:`StorageError` naming it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _pull(uri, staging, client or s3_client())
    except ClientError as exc:
        raise StorageError(f"S3 refused {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(
            f"S3 endpoint {_endpoint() or 'AWS default'} unreachable for {uri} "
            f"after {S3_ATTEMPTS} attempts with backoff: {exc}"
        ) from exc


def _pull(uri: str, staging: Path, client) -> PullResult:  # noqa: ANN001
    bucket, prefix = split_uri(uri)
    result = PullResult(local_dir=staging)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for item in page.get("Contents", []):
            key = item["Key"]
            relative = PurePosixPath(key[len(prefix) + 1 :] if prefix else key)
            if key.endswith("/") or len(relative.parts) != 2 or ".." in relative.parts:
                result.skipped.append(key)  # only <class>/<file>, like a local DATA_DIR
                continue
            target = staging.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            client.download_file(bucket, key, str(partial))
            try:
                _verify(partial, head, key)
            except StorageError:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(target)
            result.files += 1
            result.bytes += target.stat().st_size
    if result.files == 0:
        raise StorageError(f"no <class>/<file> objects under {uri}")
    return result
