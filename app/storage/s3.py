"""The S3 seam: the only module that imports `minio`; S3 failures become domain errors here."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from app.errors import ObjectMissing, StorageUnavailable

PART_SIZE = 16 * 1024 * 1024
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NoSuchVersion"}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime | None


class Store:
    """A thin, typed wrapper around one `Minio` client, shared by the whole process."""

    def __init__(self, *, endpoint: str, access_key: str, secret_key: str, secure: bool = False,
                 ca_cert: str | None = None, timeout_s: float = 5.0):
        self.endpoint = endpoint
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 3.0), read=timeout_s), maxsize=32,
            cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE", ca_certs=str(ca_cert) if ca_cert else certifi.where(),
            # One quick retry for a dropped connection; a stalled server must fail fast, not hang.
            retries=urllib3.Retry(total=2, connect=1, read=0, backoff_factor=0.1, status_forcelist=(502, 503, 504)))
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                             secure=secure, http_client=http)

    # -- error translation ---------------------------------------------------------------------

    @contextmanager
    def _translated(self, what: str):
        try:
            yield
        except S3Error as exc:
            if exc.code in MISSING_CODES:
                raise ObjectMissing(f"{what}: not found") from None
            raise StorageUnavailable(f"S3 server at {self.endpoint} refused {what} ({exc.code}); check the endpoint, "
                                     "the credentials and the bucket policy") from None
        except (ServerError, InvalidResponseError, MinioException, urllib3.exceptions.HTTPError,
                OSError, ValueError) as exc:
            if isinstance(getattr(exc, "reason", exc), urllib3.exceptions.SSLError):
                raise StorageUnavailable(
                    f"TLS to the S3 server at {self.endpoint} failed during {what}; check MINIO_SECURE and "
                    "point MINIO_CA_CERT at the CA that signed the server's certificate") from None
            raise StorageUnavailable(f"S3 server at {self.endpoint} is unreachable or failing during {what} "
                                     f"({type(exc).__name__}); retry later") from None

    # -- buckets -------------------------------------------------------------------------------

    def ensure_buckets(self, *buckets: str) -> None:
        """Create each bucket that does not exist yet."""
        for bucket in buckets:
            with self._translated(f"creating bucket {bucket!r}"):
                if not self._client.bucket_exists(bucket_name=bucket):
                    self._client.make_bucket(bucket_name=bucket)

    def clear_expiry(self, *, bucket: str) -> None:
        """Remove the bucket's lifecycle rules (earlier releases set one for SCV_MODEL_TTL_DAYS)."""
        with self._translated(f"clearing the lifecycle of {bucket!r}"):
            self._client.delete_bucket_lifecycle(bucket_name=bucket)

    # -- objects -------------------------------------------------------------------------------

    def put(self, *, bucket: str, key: str, data: BinaryIO | bytes, length: int = -1,
            content_type: str = "application/octet-stream") -> None:
        """Upload bytes or a stream; length -1 streams a multipart upload without temp files."""
        if isinstance(data, bytes | bytearray | memoryview):
            length, data = len(data), io.BytesIO(data)
        with self._translated(f"uploading {bucket}/{key}"):
            self._client.put_object(bucket_name=bucket, object_name=key, data=data, length=length,
                                    content_type=content_type, part_size=PART_SIZE)

    def put_json(self, *, bucket: str, key: str, value) -> None:
        """Upload a JSON document."""
        self.put(bucket=bucket, key=key, data=json.dumps(value).encode(), content_type="application/json")

    def get_json(self, *, bucket: str, key: str):
        """Download and parse a JSON document."""
        return json.loads(self.get_bytes(bucket=bucket, key=key))

    def get_bytes(self, *, bucket: str, key: str) -> bytes:
        """Download a whole object."""
        return b"".join(self.iter_bytes(bucket=bucket, key=key))

    def iter_bytes(self, *, bucket: str, key: str, offset: int = 0, length: int | None = None,
                   chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream an object (or a byte range of it) in chunks; the connection is released at the end."""
        what = f"reading {bucket}/{key}"
        with self._translated(what):
            response = self._client.get_object(bucket_name=bucket, object_name=key, offset=offset,
                                               length=length or 0)
        try:
            with self._translated(what):
                yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def stat(self, *, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and modification time of one object; ObjectMissing when absent."""
        with self._translated(f"inspecting {bucket}/{key}"):
            st = self._client.stat_object(bucket_name=bucket, object_name=key)
        return ObjectInfo(key=key, size=st.size or 0, etag=(st.etag or "").strip('"'),
                          last_modified=st.last_modified)

    def exists(self, *, bucket: str, key: str) -> bool:
        """True when the object exists."""
        try:
            self.stat(bucket=bucket, key=key)
        except ObjectMissing:
            return False
        return True

    def list(self, *, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under a prefix in key order."""
        with self._translated(f"listing {bucket}/{prefix}"):
            for obj in self._client.list_objects(bucket_name=bucket, prefix=prefix or None, recursive=True):
                yield ObjectInfo(key=obj.object_name, size=obj.size or 0,
                                 etag=(obj.etag or "").strip('"'), last_modified=obj.last_modified)

    def delete(self, *, bucket: str, key: str) -> None:
        """Remove one object (absent is fine)."""
        with self._translated(f"deleting {bucket}/{key}"):
            self._client.remove_object(bucket_name=bucket, object_name=key)

    def delete_prefix(self, *, bucket: str, prefix: str) -> int:
        """Remove every object under `prefix`; returns how many were removed."""
        keys = [o.key for o in self.list(bucket=bucket, prefix=prefix)]
        if keys:
            with self._translated(f"deleting {bucket}/{prefix}"):
                errors = list(self._client.remove_objects(
                    bucket_name=bucket, delete_object_list=[DeleteObject(k) for k in keys]))
            if errors:
                raise StorageUnavailable(f"S3 server at {self.endpoint} failed to delete "
                                         f"{len(errors)} objects under {bucket}/{prefix}; retry")
        return len(keys)


def store_from_settings(settings) -> Store:
    """Build the process's Store from Settings (endpoint and credentials must be resolved)."""
    return Store(endpoint=settings.minio_endpoint, access_key=settings.minio_access_key or "",
                 secret_key=settings.minio_secret_key.get_secret_value() if settings.minio_secret_key else "",
                 secure=settings.minio_secure, ca_cert=str(settings.minio_ca_cert) if settings.minio_ca_cert else None,
                 timeout_s=settings.storage_timeout_s)

