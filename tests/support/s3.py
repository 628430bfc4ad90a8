"""The embedded S3 server the tests and benchmarks run on, its credentials, and settings and buckets on it."""

import os
import secrets
import signal
from pathlib import Path

from minio import Minio
from minio.deleteobjects import DeleteObject

from app.errors import ObjectMissing
from app.settings import Settings
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store

ACCESS_KEY, SECRET_KEY = "scv-test-access", "scv-test-secret-" + secrets.token_hex(8)


def start_s3(data_dir: Path) -> EmbeddedS3:
    """A running `weed mini` keeping its files in `data_dir`, on ACCESS_KEY/SECRET_KEY; `stop()` it when done."""
    server = EmbeddedS3(data_dir=data_dir, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    server.start(ready_check=lambda: buckets_exist(store_on(server), "probe"))
    return server


def pause(server: EmbeddedS3) -> None:
    """Freeze the server (SIGSTOP): connections hang, as with a stalled endpoint."""
    os.killpg(server.process.pid, signal.SIGSTOP)


def resume(server: EmbeddedS3) -> None:
    """Undo `pause`."""
    os.killpg(server.process.pid, signal.SIGCONT)


def store_on(server: EmbeddedS3, *, timeout_s: float = 5.0) -> Store:
    """A Store client of `server`."""
    return Store(endpoint=server.endpoint, access_key=server.access_key, secret_key=server.secret_key,
                 timeout_s=timeout_s)


def buckets_exist(store: Store, *buckets: str) -> bool:
    """True when every bucket exists (a listing of it answers); StorageUnavailable when storage does not answer."""
    try:
        for bucket in buckets:
            next(iter(store.list(bucket=bucket)), None)
    except ObjectMissing:
        return False
    return True


def drop_bucket(client: Minio, bucket: str) -> None:
    """Delete `bucket` with every object in it."""
    keys = [DeleteObject(o.object_name) for o in client.list_objects(bucket_name=bucket, recursive=True)]
    errors = list(client.remove_objects(bucket_name=bucket, delete_object_list=keys))
    assert not errors, f"could not empty bucket {bucket}: {errors[:3]}"
    client.remove_bucket(bucket_name=bucket)


def make_settings(s3: EmbeddedS3, tmp: Path, **overrides) -> Settings:
    """Settings for `s3` with fresh buckets, so tests do not see each other (`_drop_new_buckets` deletes them)."""
    tag = secrets.token_hex(4)
    values = {"MINIO_ENDPOINT": s3.endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY, "MINIO_SECRET_KEY": SECRET_KEY,
              "MINIO_MODEL_BUCKET": f"models-{tag}", "MINIO_DATASET_BUCKET": f"datasets-{tag}",
              "SCV_DATA_DIR": str(tmp)}
    return Settings(_env_file=None, **{**values, **overrides})
