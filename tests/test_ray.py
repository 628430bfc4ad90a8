"""The Ray executor end to end: a local Ray head (token auth), jobs over its REST API, records in the real S3."""

import logging
import secrets
import time
from importlib.util import find_spec

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import models
from app.api.train import TrainRequest
from app.datasets.service import DatasetService
from app.jobs.ray_cluster import POLL_S
from app.jobs.service import JobRecords, new_record, prepare
from app.main import create_app, make_executor
from app.settings import SettingsError
from app.storage.s3 import store_from_settings
from tests.conftest import SECRET_KEY
from tests.fixtures_ray import LocalRayHead
from tests.jobwait import train, wait_for

# Only the local Ray head needs the package (the service speaks HTTP); CI installs it with '.[test,ray]'.
pytestmark = pytest.mark.skipif(find_spec("ray") is None,
                                reason="the Ray tests start a local Ray head: pip install -e '.[test,ray]'")

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]


@pytest.fixture(scope="module")
def ray_head():
    head = LocalRayHead().start()
    yield head
    head.stop()


def ray_settings(seeded_settings, head: LocalRayHead, **changes):
    """The seeded datasets, a model bucket of its own, and SCV_EXECUTOR=ray on the local head."""
    return seeded_settings.model_copy(update={
        "minio_model_bucket": f"models-ray-{secrets.token_hex(4)}", "executor": "ray", "ray_address": head.url,
        "ray_auth_token": SecretStr(head.token), **changes})


@pytest.fixture(scope="module")
def ray_client(seeded_settings, ray_head):
    with TestClient(create_app(ray_settings(seeded_settings, ray_head))) as client:
        yield client


def _keys(client, version: str) -> list[str]:
    settings = client.app.state.settings
    return [o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket,
                                                                 prefix=f"{version}/")]


def _long_job(client) -> str:
    # Batch size 1 over many epochs: long enough to act on while it runs.
    return train(client, dataset="mnist", layers=SMALL_NET, epochs=100, batch_size=1)["version"]


def test_train_on_ray_stores_model_and_reproduces_accuracy(ray_client, ray_head, caplog):
    caplog.set_level(logging.DEBUG)
    version = train(ray_client, dataset="mnist", epochs=2, batch_size=16)["version"]
    record = wait_for(ray_client, version)
    assert record["status"] == "succeeded", record["error"]
    assert len(record["history"]) == 2 and record["progress"]["fraction"] == 1.0

    settings = ray_client.app.state.settings
    store = store_from_settings(settings)
    blob = store.get_bytes(bucket=settings.minio_model_bucket, key=f"{version}/model.safetensors")
    header = models.read_header(blob)
    images, labels = DatasetService(store=store, settings=settings).load_split("mnist", "test")
    _, accuracy = models.evaluate(models.load_model(blob), images, labels, device="cpu",
                                  mean=header["normalization"]["mean"], std=header["normalization"]["std"])
    assert accuracy == pytest.approx(record["metrics"]["test_accuracy"])

    # Ray's own job list knows the job by the model version, and ran the worker entry point.
    ray_head.wait_status(version, {"SUCCEEDED"}, timeout=15)
    job = next(j for j in ray_head.jobs() if j.get("submission_id") == version)
    assert job["entrypoint"] == f"python -m app.jobs.worker {version}"
    # The S3 secret and the Ray token travel to the job but never into a log line.
    assert SECRET_KEY not in caplog.text and ray_head.token not in caplog.text


def test_cancel_running_and_pending_jobs(ray_client, ray_head):
    running = _long_job(ray_client)
    wait_for(ray_client, running, {"running"}, timeout=90)
    pending = _long_job(ray_client)  # the head has one CPU: Ray holds this one PENDING
    ray_head.wait_status(pending, {"PENDING"}, timeout=15)

    for version in (pending, running):
        r = ray_client.delete(f"/train/{version}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    ray_head.wait_status(running, {"STOPPED"}, timeout=5)  # DELETE waited for Ray to stop it
    ray_head.wait_status(pending, {"STOPPED"}, timeout=30)  # Ray ends a stopped PENDING job once it gets a CPU
    time.sleep(2 * POLL_S)  # the executor has seen Ray's last word on both
    for version in (running, pending):
        assert ray_client.get(f"/train/{version}").json()["status"] == "cancelled"
        assert _keys(ray_client, version) == [f"{version}/job.json"]
    assert ray_client.delete(f"/train/{running}").status_code == 409


def test_job_stopped_from_outside_is_failed_with_reason(ray_client, ray_head):
    version = _long_job(ray_client)
    wait_for(ray_client, version, {"running"}, timeout=90)
    ray_head.stop_job(version)  # straight to Ray, not through the service
    record = wait_for(ray_client, version, timeout=30)
    assert record["status"] == "failed"
    assert "stopped from outside" in record["error"]
    assert _keys(ray_client, version) == [f"{version}/job.json"]


def _stored_record(settings, version: str, status: str) -> dict:
    """A record as POST /train stores it, written straight to storage as a previous service run left it."""
    request = TrainRequest(dataset="mnist", version=version, layers=SMALL_NET, batch_size=16).model_dump()
    manifest = DatasetService(store=store_from_settings(settings), settings=settings).manifest("mnist")
    _, layers = prepare(request, manifest=manifest)
    return {**new_record(version=version, dataset="mnist", request=request, layers=layers), "status": status}


def test_restart_reconciles_records_with_ray(seeded_settings, ray_head):
    settings = ray_settings(seeded_settings, ray_head)
    with TestClient(create_app(settings)) as first:
        survivor = train(first, dataset="mnist", layers=SMALL_NET, batch_size=16)["version"]
        ray_head.wait_status(survivor, {"PENDING", "RUNNING", "SUCCEEDED"}, timeout=15)
    # The service is down; its Ray job goes on. Two records Ray never heard of: one queued, one "running".
    tag = secrets.token_hex(3)
    queued, lost = f"resume-{tag}", f"lost-{tag}"
    records = JobRecords(store=store_from_settings(settings), bucket=settings.minio_model_bucket)
    records.put(_stored_record(settings, queued, "queued"))
    records.put(_stored_record(settings, lost, "running"))

    with TestClient(create_app(settings)) as second:
        record = wait_for(second, lost, timeout=30)
        assert record["status"] == "failed" and "does not know this job" in record["error"]
        assert wait_for(second, survivor)["status"] == "succeeded"
        assert wait_for(second, queued)["status"] == "succeeded"
    assert ray_head.job(queued)["status"] in {"RUNNING", "SUCCEEDED"}


def test_wrong_ray_token_fails_the_job_with_a_hint(seeded_settings, ray_head, caplog):
    caplog.set_level(logging.DEBUG)
    settings = ray_settings(seeded_settings, ray_head, ray_auth_token=SecretStr("not-the-token"))
    with TestClient(create_app(settings)) as client:
        record = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"], timeout=30)
    assert record["status"] == "failed"
    assert "403" in record["error"] and "RAY_AUTH_TOKEN" in record["error"]
    assert "not-the-token" not in caplog.text + record["error"]


def test_ray_executor_needs_the_dashboard_url(settings):
    for address in (None, "ray://ray-head:10001"):
        with pytest.raises(SettingsError, match="RAY_ADDRESS"):
            make_executor(settings.model_copy(update={"executor": "ray", "ray_address": address}))
