"""Several service processes on one catalog and bucket: no job lost, none run twice, no model damaged."""

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from tests.support.replicas import Replica, replica_env
from tests.support.waiting import train, wait_for

pytestmark = pytest.mark.slow  # several service processes: minutes

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
LONG = {"dataset": "mnist", "layers": SMALL_NET, "epochs": 40, "batch_size": 1}  # seconds, not minutes


def _running(client, version: str, attempt: int, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/train/{version}").json()
        if record["status"] == "running" and record["attempts"] == attempt and record["worker"]:
            return record
        assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
        time.sleep(0.1)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _intact(client, version: str) -> None:
    r = client.get(f"/models/{version}")
    assert r.status_code == 200 and r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'


def test_two_replicas_on_postgresql_lose_no_job_and_run_none_twice(seeded_settings, postgres_url, tmp_path):
    env = replica_env(seeded_settings, postgres_url, tmp_path, bucket="models-replicas")
    headers = {"Authorization": "Bearer replica-test-token"}
    first = Replica(tmp_path, env)
    second = None
    try:
        first.client.headers.update(headers)
        killed = train(first.client, **LONG)["version"]
        before = _running(first.client, killed, 1)
        second = Replica(tmp_path, env)  # starting a replica changes no job
        second.client.headers.update(headers)
        after = second.client.get(f"/train/{killed}").json()
        assert {k: after[k] for k in ("status", "attempts", "worker", "error")} == {
            k: before[k] for k in ("status", "attempts", "worker", "error")}

        os.kill(before["worker"]["pid"], signal.SIGKILL)  # a worker child dies: attempt 2, on either replica
        again = _running(second.client, killed, 2)
        assert again["worker"]["pid"] != before["worker"]["pid"]

        moved = train(second.client, **LONG)["version"]
        holder = _running(second.client, moved, 1)
        # The child's parent is the forkserver; its parent is the replica that claimed the job.
        owner = first if _parent(_parent(holder["worker"]["pid"])) == first.process.pid else second
        other = second if owner is first else first
        owner.stop(signal.SIGTERM)  # its running jobs go back to the queue and finish on the other replica
        for version in (killed, moved):
            record = wait_for(other.client, version, timeout=240)
            assert record["status"] == "succeeded", record
            _intact(other.client, version)
        assert other.client.get(f"/train/{moved}").json()["attempts"] == 2
        statuses = {job["status"] for job in other.client.get("/train", params={"limit": 1000}).json()["items"]}
        assert statuses == {"succeeded"}
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop(signal.SIGKILL)


def test_a_worker_stopped_past_its_lease_changes_nothing_when_it_wakes(seeded_settings, postgres_url, tmp_path):
    # PostgreSQL: a process frozen inside a SQLite write transaction would hold the whole file's lock until it
    # wakes (see the README); PostgreSQL ends its session and with it the locks.
    settings = seeded_settings.model_copy(update={
        "data_dir": tmp_path, "lease_seconds": 2.0, "max_concurrent_jobs": 2, "minio_model_bucket": "models-sigstop",
        "database_url": SecretStr(postgres_url)})
    with TestClient(create_app(settings)) as client:
        version = train(client, **LONG)["version"]
        stale = _running(client, version, 1)["worker"]["pid"]
        os.kill(stale, signal.SIGSTOP)
        try:
            holder = _running(client, version, 2, timeout=60)["worker"]["pid"]  # the reaper gave it to another
        finally:
            os.kill(stale, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{stale}").exists() and Path(f"/proc/{stale}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the stale worker did not stop itself"
            time.sleep(0.1)
        record = wait_for(client, version, timeout=240)
        assert record["status"] == "succeeded" and record["attempts"] == 2 and record["worker"]["pid"] == holder
        metadata = client.get(f"/models/{version}/metadata").json()
        assert metadata["metrics"] == record["metrics"]
        _intact(client, version)
