"""A real `scv serve` process on the suite's S3 server, for tests of several replicas and of restarts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.storage.embedded import free_ports
from tests.support.s3 import ACCESS_KEY, SECRET_KEY


class Replica:
    """A real `scv serve` process."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                                        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "scv serve exited early"
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "scv serve did not become ready"
            time.sleep(0.3)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)
        self.client.close()


def replica_env(seeded_settings, database_url: str, tmp: Path, bucket: str, lease: float = 5) -> dict[str, str]:
    """The environment of a replica on `seeded_settings`' S3 server and datasets, with its own catalog and bucket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    return {**env, "MINIO_ENDPOINT": seeded_settings.minio_endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY,
            "MINIO_SECRET_KEY": SECRET_KEY, "MINIO_DATASET_BUCKET": seeded_settings.minio_dataset_bucket,
            "MINIO_MODEL_BUCKET": bucket, "SCV_DATABASE_URL": database_url, "SCV_DATA_DIR": str(tmp),
            "SCV_LEASE_SECONDS": str(lease), "SCV_API_TOKEN": "replica-test-token"}
