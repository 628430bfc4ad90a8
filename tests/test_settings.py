"""Settings read once, from the environment or `.env`, and handed on whole to the workers that train."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.settings import Settings, SettingsError, env_name, load_settings
from app.storage.embedded import free_ports
from tests.support.waiting import train, wait_for

EVERY_SETTING = {  # none at its default
    "MINIO_ENDPOINT": "s3.example.com:9000", "MINIO_ACCESS_KEY": "access", "MINIO_SECRET_KEY": "secret",
    "MINIO_SECURE": "true", "MINIO_CA_CERT": "ca.pem", "MINIO_MODEL_BUCKET": "my-models",
    "MINIO_DATASET_BUCKET": "my-datasets", "SCV_DATA_DIR": "data", "SCV_API_TOKEN": "t" * 20, "SCV_EXECUTOR": "ray",
    "SCV_MAX_CONCURRENT_JOBS": "3", "SCV_MODEL_TTL_DAYS": "7", "SCV_DEVICE": "cpu", "SCV_MAX_BODY_BYTES": "2048",
    "RAY_ADDRESS": "http://ray-head:8265", "RAY_AUTH_TOKEN": "ray-token", "SCV_STORAGE_TIMEOUT": "2.5",
    "SCV_DATABASE_URL": "postgresql+psycopg://scv:pw@db:5432/scv", "SCV_LEASE_SECONDS": "12",
    "SCV_MAX_ATTEMPTS": "5", "SCV_CHECKPOINT_SECONDS": "9", "SCV_CACHE_MAX_BYTES": "1000",
    "SCV_ANALYSIS_MAX_BYTES": "2097152", "SCV_PRECISION": "bf16",
    "SCV_LOG_LEVEL": "debug", "SCV_CPU_BF16": "0", "SCV_URL": "http://scv.example.com:8000",
    "SCV_ALLOW_NO_TOKEN": "true", "SCV_ALLOWED_HOSTS": "scv.example.com",
}
KEPT_BY_THE_API = {"SCV_API_TOKEN", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "SCV_ALLOW_NO_TOKEN", "SCV_ALLOWED_HOSTS"}


def test_a_worker_reads_back_every_setting_but_the_api_s_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = Settings(_env_file=None, **EVERY_SETTING)
    assert {env_name(field) for field in Settings.model_fields} == set(EVERY_SETTING)  # a new setting: add it above
    env = given.to_env()
    assert set(env) == set(EVERY_SETTING) - KEPT_BY_THE_API
    assert env["SCV_DATA_DIR"] == str(tmp_path / "data") and env["MINIO_CA_CERT"] == str(tmp_path / "ca.pem")
    monkeypatch.chdir("/")  # a worker may start elsewhere: paths arrive absolute
    back = Settings(_env_file=None, **env)
    assert back.model_dump() == {**given.model_dump(), "data_dir": tmp_path / "data",
                                 "minio_ca_cert": tmp_path / "ca.pem"}
    assert back.minio_secret_key.get_secret_value() == "secret"
    assert back.api_token is back.ray_address is back.ray_auth_token is None
    assert not back.allow_no_token and back.allowed_hosts == ()


def test_an_invalid_setting_is_named(monkeypatch):
    monkeypatch.delenv("SCV_CPU_BF16", raising=False)
    with pytest.raises(SettingsError, match="SCV_CPU_BF16"):
        load_settings(_env_file=None, SCV_CPU_BF16="maybe")


def test_a_setting_only_in_dot_env_reaches_the_training_child(seeded_settings, tmp_path):
    """SCV_CACHE_MAX_BYTES=0 in `.env` of `scv serve`: the child that trains keeps no dataset in the cache (with
    the default bound it would keep both splits it loads)."""
    data = tmp_path / "data"
    (tmp_path / ".env").write_text("SCV_CACHE_MAX_BYTES=0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    storage = seeded_settings.to_env()  # the seeded datasets' S3 server and bucket
    env.update({name: storage[name] for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                                                 "MINIO_DATASET_BUCKET")})
    env.update(MINIO_MODEL_BUCKET=f"models-env-{secrets.token_hex(3)}", SCV_DATA_DIR=str(data))
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, process)
            version = train(client, dataset="mnist", epochs=1, batch_size=16,
                            layers=[{"type": "Flatten"}, {"type": "Linear", "out_features": 8}])["version"]
            assert wait_for(client, version, timeout=180)["status"] == "succeeded"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert sorted(path.name for path in Path(data, "cache").glob("*.safetensors")) == []


def _wait_ready(client: httpx.Client, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "scv serve exited"
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "scv serve did not become ready"
        time.sleep(0.3)
