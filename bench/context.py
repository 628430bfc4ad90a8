"""What every benchmark gets: a fresh embedded S3 server, a Store on it, and a scratch directory."""

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store
from tests.support.s3 import start_s3, store_on


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
        server = start_s3(Path(tmp) / "s3")
        try:
            settings = Settings(_env_file=None, MINIO_ENDPOINT=server.endpoint, MINIO_ACCESS_KEY=server.access_key,
                                MINIO_SECRET_KEY=server.secret_key, SCV_DATA_DIR=str(Path(tmp) / "data"))
            store = store_on(server, timeout_s=30)
            store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
            yield BenchContext(server=server, store=store, settings=settings, scratch=Path(tmp))
        finally:
            server.stop()
