"""Where the index lives: under the data dir, or in an S3-compatible object store.

`storage.uri = "s3://bucket/prefix"` puts the LanceDB tables in a bucket, so several
replicas on several machines read one index. What LanceDB needs that is not secret (the
endpoint, the region, plain http) comes from the config; the keys come only from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or an instance
role), read by LanceDB and boto3 themselves, so they never sit in a config file or in
`storage_options` that an error message could print.

Beside the tables the bucket holds two small objects of ours under the prefix, which
LanceDB's table listing ignores: `active-table` (the pointer `rag ingest --reembed`
switches, which every replica must see) and `writer.lease` (rag.index.lease). Everything else of
a machine's state (uploads, keys, usage ledger) stays in its data dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import StorageSettings
from rag.errors import ConfigError, StoreError

DB_DIR = "lancedb"
DEFAULT_REGION = "us-east-1"
# Seconds before a request to the store gives up connecting: an unreachable endpoint
# should be an error within seconds, not after the default retries of a minute or more.
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class IndexLocation:
    """The index's address for lancedb.connect, and for our own objects beside the tables."""

    uri: str  # a local directory, or s3://bucket/prefix
    storage_options: dict[str, str] = field(default_factory=dict)
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    region: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.bucket)

    def key(self, name: str) -> str:
        """The object key of `name` beside the tables."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        """The index's address for messages: the URI, and the endpoint when not AWS."""
        return f"{self.uri} at {self.endpoint}" if self.endpoint else self.uri


def local_location(data_path: Path) -> IndexLocation:
    return IndexLocation(str(data_path / DB_DIR))


def index_location(storage: StorageSettings, env: Mapping[str, str] | None = None) -> IndexLocation:
    """The index's location from the settings (storage.uri, else data_dir/lancedb)."""
    if not storage.remote:
        return local_location(storage.data_path)
    env = os.environ if env is None else env
    uri = storage.uri.strip().rstrip("/")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    region = storage.s3_region.strip() or env.get("AWS_REGION", "") or DEFAULT_REGION
    options = {"aws_region": region, "connect_timeout": f"{CONNECT_TIMEOUT_S}s"}
    endpoint = storage.s3_endpoint.strip().rstrip("/")
    if endpoint:
        options["aws_endpoint"] = endpoint
    if storage.s3_allow_http:
        options["allow_http"] = "true"
    return IndexLocation(uri, options, bucket, prefix.strip("/"), endpoint, region)


def s3_client(location: IndexLocation) -> Any:
    """A boto3 S3 client for our own objects in the index's bucket (keys from the environment)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise ConfigError(
            f"storage.uri = {location.uri!r} needs boto3: pip install 'rag[s3]'"
        ) from e
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        # S3-compatible servers (MinIO, moto) are addressed by path, not by bucket host name.
        s3={"addressing_style": "path"} if location.endpoint else {},
    )
    return boto3.client(
        "s3", endpoint_url=location.endpoint or None, region_name=location.region, config=config
    )


def read_object(client: Any, location: IndexLocation, name: str) -> bytes | None:
    """The content of our object `name`, or None when there is none."""
    try:
        return client.get_object(Bucket=location.bucket, Key=location.key(name))["Body"].read()
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        raise store_error(e, location, f"reading {location.key(name)}") from e


def write_object(client: Any, location: IndexLocation, name: str, data: bytes) -> None:
    """Replace our object `name` whole (an S3 PUT is atomic: readers see old or new)."""
    try:
        client.put_object(Bucket=location.bucket, Key=location.key(name), Body=data)
    except Exception as e:
        raise store_error(e, location, f"writing {location.key(name)}") from e


def error_code(e: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "PreconditionFailed"), or ""."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return ""
    return str(e.response.get("Error", {}).get("Code", ""))


# S3 error codes of a refused key or signature.
_REFUSED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
# LanceDB reaches the bucket through Rust's object_store, whose failures arrive as plain
# OSError/RuntimeError text: these markers in it, and what they mean.
_CREDENTIALS = (*_REFUSED_CODES, "status: 403", "credential")
_UNREACHABLE = (
    "Could not connect",
    "Connect timeout",
    "error trying to connect",
    "Connection refused",
    "tcp connect error",
    "dns error",
    "Failed to connect to namespace",
)


def store_error(e: BaseException, location: IndexLocation, doing: str) -> StoreError:
    """A StoreError for a failed object-store call that says which setting or variable to fix."""
    where = location.describe()
    problem = _boto_problem(e) or _lancedb_problem(f"{type(e).__name__}: {e}")
    if problem == "bucket":
        return StoreError(
            f"{doing}: bucket {location.bucket!r} does not exist ({where}); create it"
        )
    if problem == "credentials":
        return StoreError(
            f"{doing}: the object store {where} refused the credentials: check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
        )
    if problem == "unreachable":
        return StoreError(
            f"{doing}: cannot reach the object store {where}: check storage.s3_endpoint "
            "and that the server is up"
        )
    return StoreError(f"{doing} in {where}: {_first_line(str(e))}")


def _boto_problem(e: BaseException) -> str:
    """ "bucket", "credentials" or "unreachable" for botocore's exceptions, else ""."""
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )
    except ImportError:  # no boto3: the error came from LanceDB
        return ""
    if isinstance(e, ClientError):
        code = error_code(e)
        if code == "NoSuchBucket":
            return "bucket"
        return "credentials" if code in _REFUSED_CODES else ""
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return "credentials"
    if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
        return "unreachable"
    return ""


def _lancedb_problem(text: str) -> str:
    if "NoSuchBucket" in text:
        return "bucket"
    if any(m in text for m in _CREDENTIALS):
        return "credentials"
    if any(m in text for m in _UNREACHABLE) and "status: 4" not in text:
        return "unreachable"
    return ""


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= limit else line[:limit] + "…"
