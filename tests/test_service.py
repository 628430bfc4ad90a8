"""The service as a user runs it: `scv serve` on the embedded server, and storage faults it survives."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.storage.embedded import free_ports
from tests.support.s3 import SECRET_KEY, buckets_exist, make_settings, pause, resume, start_s3, store_on


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _serve(tmp_path: Path, port: int, *, output=subprocess.DEVNULL, **env) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}, **env}
    env["SCV_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(port: int, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "scv serve exited early"
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("scv serve did not become ready")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_scv_serve_on_embedded_storage_leaves_nothing_behind(tmp_path, stop):
    (port,) = free_ports(1)
    process = _serve(tmp_path, port)
    try:
        ready = _wait_ready(port, process)
        assert ready == {"status": "ready"}  # /readyz is open to anyone: it says nothing of where storage is
        assert _processes_mentioning(str(tmp_path / "data" / "s3")), "the embedded weed server is not running"
        assert (tmp_path / "data" / "s3-credentials.json").stat().st_mode & 0o777 == 0o600
        process.send_signal(stop)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15  # a parent-death signal reaches weed asynchronously
    while _processes_mentioning(str(tmp_path / "data" / "s3")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(tmp_path / "data" / "s3")) == []


def test_scv_serve_starts_the_embedded_server_without_warnings(tmp_path):
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = _serve(tmp_path, port, output=output, SCV_API_TOKEN="t0ken-" + os.urandom(8).hex())
    try:
        _wait_ready(port, process)
        started = log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "embedded S3 server (SeaweedFS) listening on" in started and "Application startup complete" in started
    assert [line for line in started.splitlines() if "WARNING" in line] == []
    assert [line.split(": ", 1)[1] for line in started.splitlines() if "alembic" in line or "catalog schema" in line
            ] == ["catalog schema: migrated empty → 0004"]  # one line, none of alembic's own


def _readyz_within(client, seconds: float):
    """GET /readyz, failing the test if it does not answer within `seconds` (a bound, not a benchmark)."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", client.get("/readyz")), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "r" in result, f"/readyz did not answer within {seconds}s"
    return result["r"]


@pytest.fixture
def own_s3(tmp_path):
    server = start_s3(tmp_path / "own-s3")
    yield server
    resume(server) if server.process.poll() is None else None
    server.stop()


def _assert_503_naming(response, endpoint: str, caplog):
    """503 naming storage as the failed dependency; where it is, only in the service's log."""
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["dependency"] == "storage" and endpoint not in response.text
    assert endpoint in caplog.text
    assert SECRET_KEY not in response.text and SECRET_KEY not in caplog.text


def test_stalled_storage_is_503_quickly_then_recovers(own_s3, tmp_path, caplog):
    with TestClient(create_app(make_settings(own_s3, tmp_path))) as client:
        assert _readyz_within(client, 15).status_code == 200
        pause(own_s3)
        try:
            _assert_503_naming(_readyz_within(client, 15), own_s3.endpoint, caplog)
        finally:
            resume(own_s3)
        assert _readyz_within(client, 15).status_code == 200


def test_storage_down_then_back_on_the_same_endpoint(own_s3, tmp_path, caplog):
    with TestClient(create_app(make_settings(own_s3, tmp_path))) as client:
        assert _readyz_within(client, 15).status_code == 200
        own_s3.stop()
        _assert_503_naming(_readyz_within(client, 15), own_s3.endpoint, caplog)
        own_s3.start(ready_check=lambda: None, s3_port=own_s3.port)
        deadline = time.monotonic() + 30
        while _readyz_within(client, 15).status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready again"
            time.sleep(0.3)


def test_wrong_credentials_are_503_without_the_secret(s3, tmp_path, caplog):
    settings = make_settings(s3, tmp_path, MINIO_SECRET_KEY="definitely-wrong-secret")
    with TestClient(create_app(settings)) as client:
        r = _readyz_within(client, 15)
        _assert_503_naming(r, s3.endpoint, caplog)
        assert "definitely-wrong-secret" not in r.text


def test_external_endpoint_gets_both_buckets(own_s3, tmp_path):
    settings = make_settings(own_s3, tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
    store = store_on(own_s3)
    assert buckets_exist(store, settings.minio_model_bucket, settings.minio_dataset_bucket)


def test_bad_configuration_names_the_variable(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))},
           "SCV_MAX_CONCURRENT_JOBS": "zero", "MINIO_SECRET_KEY": "hush-hush"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "SCV_MAX_CONCURRENT_JOBS" in r.stderr and "hush-hush" not in r.stderr


def test_seeding_while_serving_shares_the_embedded_server(tmp_path, raw_root):
    (port,) = free_ports(1)
    process = _serve(tmp_path, port)
    try:
        _wait_ready(port, process)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
        env["SCV_DATA_DIR"] = str(tmp_path / "data")
        seeded = subprocess.run([sys.executable, "-m", "app.cli", "datasets", "seed", "mnist", "--from-dir",
                                 str(raw_root), "--cka-per-class", "2"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=180)
        assert seeded.returncode == 0, seeded.stderr[-2000:]
        assert len(_processes_mentioning(str(tmp_path / "data" / "s3"))) == 1  # one weed for one data dir
        manifest = httpx.get(f"http://127.0.0.1:{port}/datasets/mnist", timeout=10).json()
        assert manifest["name"] == "mnist" and manifest["cka_per_class"] == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
