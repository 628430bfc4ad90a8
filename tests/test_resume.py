"""Interrupted jobs resume from their checkpoints and end bit-identical to an uninterrupted run."""

import os
import signal

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_tensors

from app.main import create_app
from app.storage.s3 import store_from_settings
from tests.support import resume
from tests.support.replicas import Replica, replica_env
from tests.support.resume import (
    JOB,
    assert_same_run,
    checkpoints,
    finished_run,
    objects,
    running_pid,
    snapshots,
    stop_when_latest,
)
from tests.support.waiting import train, wait_for, wait_until


@pytest.fixture(scope="module")
def resumable(seeded_settings, tmp_path_factory):
    """Settings with frequent mid-epoch checkpoints, their own catalog and model bucket."""
    return seeded_settings.model_copy(update={
        "data_dir": tmp_path_factory.mktemp("resume"), "minio_model_bucket": "models-resume",
        "checkpoint_seconds": 0.02})  # epochs of the tiny set last ~0.1 s: mid-epoch checkpoints are the rule


@pytest.fixture(scope="module")
def app_client(resumable):
    with TestClient(create_app(resumable)) as client:
        yield client


@pytest.fixture(scope="module")
def reference(resumable, tmp_path_factory):
    """The weights, metrics and snapshots of uninterrupted runs, per precision. They store no checkpoint (how often a
    run stores one changes none of its results), which makes them quicker."""
    settings = resumable.model_copy(update={"data_dir": tmp_path_factory.mktemp("reference"),
                                            "minio_model_bucket": "models-reference", "checkpoint_seconds": 600})
    runs = {}
    with TestClient(create_app(settings)) as client:
        for precision in ("auto", "fp32"):
            version = train(client, **JOB, precision=precision)["version"]
            record = wait_for(client, version, timeout=300)
            assert record["status"] == "succeeded" and record["resumed_from"] is None
            runs[precision] = finished_run(client, version)
    return runs


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_sigkill_mid_epoch_resumes_bit_identical(app_client, reference, precision):
    version = train(app_client, **JOB, precision=precision)["version"]
    pid = running_pid(app_client, version, 1)
    latest = stop_when_latest(app_client, version, pid, lambda c: c["step"] > 0)  # mid-epoch
    os.kill(pid, signal.SIGKILL)
    record = assert_same_run(app_client, version, reference[precision])
    assert record["attempts"] == 2
    assert record["resumed_from"] == {"epoch": latest["epoch"], "step": latest["step"], "exact": True}


def test_sigkill_just_after_an_epoch_end_checkpoint(resumable, reference, tmp_path):
    settings = resumable.model_copy(update={"checkpoint_seconds": 3600.0, "data_dir": tmp_path})  # epoch ends only
    with TestClient(create_app(settings)) as client:
        version = train(client, **JOB)["version"]
        pid = running_pid(client, version, 1)
        latest = stop_when_latest(client, version, pid, lambda c: True)  # only epoch ends are checkpointed
        os.kill(pid, signal.SIGKILL)
        record = assert_same_run(client, version, reference["auto"])
    assert record["resumed_from"] == {"epoch": latest["epoch"], "step": 0, "exact": True}


def test_a_service_stopped_mid_job_resumes_it_when_started_again(resumable, reference, tmp_path):
    settings = resumable.model_copy(update={"data_dir": tmp_path})
    with TestClient(create_app(settings)) as first:
        version = train(first, **JOB)["version"]
        running_pid(first, version, 1)
        wait_until(lambda: any(c["epoch"] >= 3 for c in checkpoints(first, version)), what="checkpoint")
    # the lifespan's end is what SIGTERM runs: the job went back to the queue
    with TestClient(create_app(settings)) as second:
        assert second.get(f"/train/{version}").json()["error"] is None
        record = assert_same_run(second, version, reference["auto"])
    assert record["resumed_from"]["epoch"] >= 3


@pytest.fixture(scope="module")
def recipe_reference(resumable, tmp_path_factory):
    """The weights, record and snapshots of an uninterrupted run of RECIPE_JOB, storing no checkpoint."""
    settings = resumable.model_copy(update={"data_dir": tmp_path_factory.mktemp("recipe-reference"),
                                            "minio_model_bucket": "models-recipe", "checkpoint_seconds": 600})
    with TestClient(create_app(settings)) as client:
        record = wait_for(client, train(client, **resume.RECIPE_JOB)["version"], timeout=300)
        assert record["status"] == "succeeded" and record["resumed_from"] is None, record
        return finished_run(client, record["version"])


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_a_recipe_job_killed_and_resumed_is_bit_identical(app_client, recipe_reference, where):
    version = train(app_client, **resume.RECIPE_JOB)["version"]
    pid = running_pid(app_client, version, 1)
    latest = stop_when_latest(app_client, version, pid, lambda c: (c["step"] > 0) == (where == "mid-epoch"))
    os.kill(pid, signal.SIGKILL)
    record = assert_same_run(app_client, version, recipe_reference)
    assert record["resumed_from"] == {"epoch": latest["epoch"], "step": latest["step"], "exact": True}
    assert record["request"]["augment"] == {"shift": 2, "flip": True, "cutout": 0}


def test_a_corrupted_checkpoint_is_never_used(app_client, reference):
    version = train(app_client, **JOB)["version"]
    pid = running_pid(app_client, version, 1)
    wait_until(lambda: len(checkpoints(app_client, version)) == 2, what="two checkpoints")
    stop_when_latest(app_client, version, pid, lambda c: True)  # no newer checkpoint while we damage the latest
    latest, previous = checkpoints(app_client, version)
    settings = app_client.app.state.settings
    store_from_settings(settings).put(bucket=settings.minio_model_bucket, key=latest["key"], data=b"\0" * 64)
    os.kill(pid, signal.SIGKILL)
    record = assert_same_run(app_client, version, reference["auto"])  # the one before is exact too
    resumed = record["resumed_from"]
    assert (resumed["epoch"], resumed["step"]) == (previous["epoch"], previous["step"])
    assert "not used" in resumed["note"] and "sha256" in resumed["note"]


def test_every_checkpoint_corrupted_starts_over_and_says_so(app_client, reference):
    version = train(app_client, **JOB)["version"]
    pid = running_pid(app_client, version, 1)
    wait_until(lambda: len(checkpoints(app_client, version)) == 2, what="two checkpoints")
    stop_when_latest(app_client, version, pid, lambda c: True)
    settings = app_client.app.state.settings
    for entry in checkpoints(app_client, version):
        store_from_settings(settings).delete(bucket=settings.minio_model_bucket, key=entry["key"])
    os.kill(pid, signal.SIGKILL)
    record = assert_same_run(app_client, version, reference["auto"])
    assert record["resumed_from"]["step"] == 0 and record["resumed_from"]["epoch"] == 1
    assert "started over" in record["resumed_from"]["note"]


def test_no_checkpoint_outlives_a_cancelled_or_deleted_job(app_client):
    cancelled = train(app_client, **JOB)["version"]
    running_pid(app_client, cancelled, 1)
    wait_until(lambda: checkpoints(app_client, cancelled), what="checkpoint")
    assert app_client.delete(f"/train/{cancelled}").json()["status"] == "cancelled"
    wait_until(lambda: not objects(app_client, f"{cancelled}/") and not checkpoints(app_client, cancelled),
               timeout=30, what="checkpoints removed after cancel")

    kept = train(app_client, **{**JOB, "epochs": 2})["version"]
    assert wait_for(app_client, kept, timeout=300)["status"] == "succeeded"
    assert app_client.delete(f"/models/{kept}").status_code == 204
    assert objects(app_client, f"{kept}/") == [] and checkpoints(app_client, kept) == []


def test_sigterm_of_the_whole_service_and_a_new_start_resume_bit_identical(seeded_settings, tmp_path):
    env = {**replica_env(seeded_settings, f"sqlite:///{tmp_path}/catalog.db", tmp_path, bucket="models-sigterm"),
           "SCV_CHECKPOINT_SECONDS": "0.1"}
    headers = {"Authorization": f"Bearer {env['SCV_API_TOKEN']}"}
    first = Replica(tmp_path, env)
    try:
        first.client.headers.update(headers)
        uninterrupted = train(first.client, **JOB)["version"]
        want = wait_for(first.client, uninterrupted, timeout=300)
        version = train(first.client, **JOB)["version"]
        wait_until(lambda: first.client.get(f"/train/{version}").json()["progress"]["epoch"] >= 3, what="epoch 3")
    finally:
        first.stop(signal.SIGTERM)  # the job goes back to the queue, its checkpoints stay
    second = Replica(tmp_path, env)
    try:
        second.client.headers.update(headers)
        record = wait_for(second.client, version, timeout=300)
        assert record["status"] == "succeeded" and record["attempts"] == 2
        assert record["resumed_from"]["epoch"] >= 3 and record["resumed_from"]["exact"] is True
        assert record["metrics"] == want["metrics"] and record["history"] == want["history"]
        got, expected = (load_tensors(second.client.get(f"/models/{v}").content) for v in (version, uninterrupted))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
        kept, expected = (snapshots(second.client, v) for v in (version, uninterrupted))
        assert len(kept) == JOB["epochs"] + 1 and kept == expected  # byte for byte, but for the version they name
    finally:
        second.stop(signal.SIGKILL)


def test_no_checkpoint_outlives_a_failed_job(resumable, tmp_path):
    settings = resumable.model_copy(update={"data_dir": tmp_path, "max_attempts": 1})
    with TestClient(create_app(settings)) as client:
        version = train(client, **JOB)["version"]
        pid = running_pid(client, version, 1)
        wait_until(lambda: checkpoints(client, version), what="checkpoint")
        os.kill(pid, signal.SIGKILL)  # the only attempt is lost: the job fails
        assert wait_for(client, version)["status"] == "failed"
        wait_until(lambda: not objects(client, f"{version}/") and not checkpoints(client, version),
                   timeout=30, what="checkpoints and snapshots removed after failure")
