"""The Ray dispatcher end to end: a local Ray head (token auth), each attempt a Ray job, the catalog and real S3."""

import hashlib
import logging
import os
import secrets
import signal
import time
from importlib.util import find_spec

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import models
from app.datasets.service import DatasetService
from app.errors import DatabaseUnavailable
from app.jobs.queue import Claim
from app.jobs.ray_cluster import submission_id
from app.main import create_app
from app.settings import SettingsError
from app.storage import layout
from app.storage.s3 import store_from_settings
from tests.support.rayhead import RAY_TERMINAL, LocalRayHead
from tests.support.resume import JOB, assert_same_run, finished_run, running_pid, stop_when_latest
from tests.support.s3 import SECRET_KEY
from tests.support.waiting import train, wait_for

# Only the local Ray head needs the package (the service speaks HTTP); CI installs it with '.[test,ray]'.
pytestmark = [pytest.mark.slow,  # a local Ray head and its jobs: minutes
              pytest.mark.skipif(find_spec("ray") is None,
                                 reason="the Ray tests start a local Ray head: pip install -e '.[test,ray]'")]


@pytest.fixture(scope="module")
def ray_head():
    head = LocalRayHead().start()
    yield head
    head.stop()


def ray_settings(seeded_settings, head: LocalRayHead, data_dir, **changes):
    """The seeded datasets; a catalog (in `data_dir`) and model bucket of its own; SCV_EXECUTOR=ray on the head.

    Two attempts: one Ray job stopped from outside runs again, the second ends the job."""
    return seeded_settings.model_copy(update={
        "minio_model_bucket": f"models-ray-{secrets.token_hex(4)}", "data_dir": data_dir, "executor": "ray",
        "ray_address": head.url, "ray_auth_token": SecretStr(head.token), "max_attempts": 2, **changes})


@pytest.fixture(scope="module")
def ray_client(seeded_settings, ray_head, tmp_path_factory):
    with TestClient(create_app(ray_settings(seeded_settings, ray_head, tmp_path_factory.mktemp("ray")))) as client:
        yield client


def _keys(client, version: str) -> list[str]:
    settings = client.app.state.settings
    return [o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket,
                                                                 prefix=f"{version}/")]


def _long_job(client, **extra) -> str:
    # The default network, batch size 1, 100 epochs: long enough to act on while it runs.
    return train(client, dataset="mnist", epochs=100, batch_size=1, **extra)["version"]


def _started(client, version: str, attempt: int = 1, *, timeout: float = 90.0) -> dict:
    """The record once the attempt's worker runs on Ray (it has named itself)."""
    deadline = time.monotonic() + timeout
    while True:
        record = wait_for(client, version, {"running"}, timeout=timeout)
        if record["attempts"] == attempt and record["worker"]:
            return record
        assert time.monotonic() < deadline, f"attempt {attempt} of {version} did not start: {record}"
        time.sleep(0.1)


def test_train_on_ray_stores_an_intact_model(ray_client, ray_head, caplog):
    caplog.set_level(logging.DEBUG)
    version = train(ray_client, dataset="mnist", epochs=2, batch_size=16)["version"]
    record = wait_for(ray_client, version)
    assert record["status"] == "succeeded", record["error"]
    assert record["attempts"] == 1 and len(record["history"]) == 2 and record["progress"]["fraction"] == 1.0
    assert record["worker"]["pid"] != os.getpid()

    download = ray_client.get(f"/models/{version}")
    blob = download.content
    assert download.headers["etag"] == f'"{hashlib.sha256(blob).hexdigest()}"'
    settings = ray_client.app.state.settings
    store = store_from_settings(settings)
    header = models.read_header(blob)
    images, labels = DatasetService(store=store, settings=settings).load_split("mnist", "test")
    _, accuracy = models.evaluate(models.load_model(blob), images, labels, device="cpu",
                                  mean=header["normalization"]["mean"], std=header["normalization"]["std"])
    assert accuracy == pytest.approx(record["metrics"]["test_accuracy"])

    # Ray knows the first attempt by the model version, and ran the worker entry point for attempt 1.
    job = ray_head.wait_status(version, {"SUCCEEDED"}, timeout=15)
    assert job["entrypoint"] == f"python -m app.jobs.worker {version} 1"
    # The S3 secret and the Ray token travel to the job but never into a log line, here or on Ray.
    logs = caplog.text + ray_head.logs(version)
    assert SECRET_KEY not in logs and ray_head.token not in logs


def test_cancel_running_and_pending_jobs(ray_client, ray_head):
    running = _long_job(ray_client)
    _started(ray_client, running)
    pending = _long_job(ray_client)  # the head has one CPU: Ray holds this one PENDING
    ray_head.wait_status(pending, {"PENDING"}, timeout=15)

    for version in (pending, running):
        r = ray_client.delete(f"/train/{version}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert ray_head.job(running)["status"] == "STOPPED"  # DELETE waited for Ray to stop it
    ray_head.wait_status(pending, RAY_TERMINAL, timeout=30)  # Ray ends a stopped PENDING job once it gets a CPU
    for version in (running, pending):
        assert ray_client.get(f"/train/{version}").json()["status"] == "cancelled"
        assert _keys(ray_client, version) == []
    assert ray_client.delete(f"/train/{running}").status_code == 409

    # The version is free again once deleted; Ray still has its stopped job by that name, and makes room.
    assert ray_client.delete(f"/models/{running}").status_code == 204
    reused = train(ray_client, dataset="mnist", version=running, epochs=1, batch_size=16)
    assert wait_for(ray_client, reused["version"])["status"] == "succeeded"
    assert ray_head.wait_status(running, {"SUCCEEDED"}, timeout=15)["entrypoint"].endswith(f"{running} 1")


class CatalogAwayOnce:
    """The dispatcher's queue, whose first hand-back fails as when the catalog is briefly unreachable."""

    def __init__(self, queue):
        self.queue, self.failures = queue, 0

    def __getattr__(self, name):
        return getattr(self.queue, name)

    def release(self, claim, **kwargs):
        if not self.failures:
            self.failures += 1
            raise DatabaseUnavailable("the catalog database did not answer (injected); retry shortly")
        return self.queue.release(claim, **kwargs)


def test_a_ray_job_stopped_from_outside_runs_again_then_fails_in_ray_s_words(ray_client, ray_head, monkeypatch):
    version = _long_job(ray_client)
    _started(ray_client, version, 1)
    ray_head.stop_job(version)  # straight to Ray, not through the service: a lost attempt
    second = _started(ray_client, version, 2)
    assert second["error"] is None
    assert ray_head.job(f"{version}..attempt-2")["entrypoint"] == f"python -m app.jobs.worker {version} 2"

    # The last attempt's hand-back meets a catalog hiccup: the dispatcher tries again on its next poll.
    dispatcher = ray_client.app.state.jobs.executor
    monkeypatch.setattr(dispatcher, "queue", CatalogAwayOnce(dispatcher.queue))
    ray_head.stop_job(f"{version}..attempt-2")
    record = wait_for(ray_client, version, timeout=20)  # well within the lease: not the reaper's doing
    assert dispatcher.queue.failures == 1
    assert record["status"] == "failed" and "2 lost attempts" in record["error"]
    assert ray_head.job(f"{version}..attempt-2")["message"] in record["error"]  # Ray's words
    assert _keys(ray_client, version) == []


def test_an_api_restart_leaves_a_running_ray_job_alone(seeded_settings, ray_head, tmp_path):
    settings = ray_settings(seeded_settings, ray_head, tmp_path)
    with TestClient(create_app(settings)) as first:
        version = train(first, dataset="mnist", epochs=10, batch_size=1)["version"]
        pid = _started(first, version)["worker"]["pid"]
        os.kill(pid, signal.SIGSTOP)  # hold it mid-job while the API restarts (well within its lease)
    try:
        with TestClient(create_app(settings)) as second:
            record = second.get(f"/train/{version}").json()
            assert record["status"] == "running" and record["attempts"] == 1
            os.kill(pid, signal.SIGCONT)
            record = wait_for(second, version)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert record["status"] == "succeeded" and record["attempts"] == 1 and record["worker"]["pid"] == pid
    ray_head.wait_status(version, {"SUCCEEDED"}, timeout=15)  # its process exits once the record says so
    assert f"{version}..attempt-2" not in {job.get("submission_id") for job in ray_head.jobs()}


def test_a_ray_job_killed_mid_epoch_resumes_as_attempt_2_bit_identical(seeded_settings, ray_head, tmp_path):
    # A Ray worker trains on one thread (OMP_NUM_THREADS from num_cpus), so both runs share device, precision and
    # threads. Its epochs of the tiny MNIST last about 0.1 s: checkpoints every 0.02 s make mid-epoch ones the rule.
    # The reference stores none (how often a run stores checkpoints changes none of its results): it is quicker.
    settings = ray_settings(seeded_settings, ray_head, tmp_path, checkpoint_seconds=0.02)
    with TestClient(create_app(settings.model_copy(update={"checkpoint_seconds": 600}))) as client:  # no stops
        uninterrupted = train(client, **JOB)["version"]
        reference = wait_for(client, uninterrupted, timeout=300)
        assert reference["status"] == "succeeded" and reference["attempts"] == 1, reference
        assert reference["resumed_from"] is None
    with TestClient(create_app(settings)) as client:
        version = train(client, **JOB)["version"]
        pid = running_pid(client, version, 1)
        latest = stop_when_latest(client, version, pid, lambda c: c["step"] > 0)  # mid-epoch
        os.kill(pid, signal.SIGKILL)  # the worker Ray started, not Ray's own processes
        ended = wait_for(client, version, timeout=300)
        assert ended["status"] == "succeeded", ended
        # The worker removes the checkpoints just after recording the end; Ray's SUCCEEDED says it has exited.
        second = ray_head.wait_status(f"{version}..attempt-2", {"SUCCEEDED"}, timeout=30)
        record = assert_same_run(client, version, finished_run(client, uninterrupted))
    assert second["entrypoint"] == f"python -m app.jobs.worker {version} 2"
    assert ray_head.job(version)["status"] == "FAILED"  # Ray saw the first attempt's process die
    assert record["attempts"] == 2 and record["worker"]["pid"] != pid
    assert record["resumed_from"] == {"epoch": latest["epoch"], "step": latest["step"], "exact": True}


def test_a_wrong_ray_token_fails_the_job_with_a_hint(seeded_settings, ray_head, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = ray_settings(seeded_settings, ray_head, tmp_path, ray_auth_token=SecretStr("not-the-token"))
    with TestClient(create_app(settings)) as client:
        record = wait_for(client, train(client, dataset="mnist")["version"], timeout=30)
    assert record["status"] == "failed"
    assert "Ray refused the job" in record["error"] and "RAY_AUTH_TOKEN" in record["error"]
    assert "not-the-token" not in caplog.text + record["error"]


def test_the_ray_executor_needs_the_dashboard_url(settings):
    for address in (None, "ray://ray-head:10001"):
        with pytest.raises(SettingsError, match="RAY_ADDRESS"), \
                TestClient(create_app(settings.model_copy(update={"executor": "ray", "ray_address": address}))):
            pass


def test_no_later_attempt_s_submission_id_is_a_version_or_another_job_s_id():
    assert submission_id(Claim("foo", 1)) == "foo"  # the first attempt is named after its version
    later = [submission_id(Claim("foo", n)) for n in (2, 3, 12)]
    assert later[0] == "foo..attempt-2" and not any(layout.is_valid_version(sid) for sid in later)
    ids = {submission_id(Claim(version, n)) for version in ("foo", "foo.attempt-2") for n in (1, 2, 3)}
    assert len(ids) == 6  # "foo.attempt-2" (a valid version) no longer names foo's second attempt
