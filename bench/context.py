"""What every benchmark gets: a fresh embedded S3 server, a Store on it, and a scratch directory."""

import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store


@dataclass
class BenchContext:
    server: EmbeddedS3
    store: Store
    settings: Settings
    scratch: Path


@contextmanager
def bench_context():
    """Start a throw-away S3 server with its own buckets; stop it afterwards."""
    with tempfile.TemporaryDirectory(prefix="scv-bench-") as tmp:
        access, secret = "bench", secrets.token_hex(12)
        server = EmbeddedS3(data_dir=Path(tmp) / "s3", access_key=access, secret_key=secret)
        server.start(ready_check=lambda: Store(endpoint=server.endpoint, access_key=access,
                                               secret_key=secret).buckets_exist("probe"))
        try:
            settings = Settings(_env_file=None, MINIO_ENDPOINT=server.endpoint, MINIO_ACCESS_KEY=access,
                                MINIO_SECRET_KEY=secret, SCV_DATA_DIR=str(Path(tmp) / "data"))
            store = Store(endpoint=server.endpoint, access_key=access, secret_key=secret, timeout_s=30)
            store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
            yield BenchContext(server=server, store=store, settings=settings, scratch=Path(tmp))
        finally:
            server.stop()
