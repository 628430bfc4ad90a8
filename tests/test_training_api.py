"""Training jobs end to end: real HTTP through the app, real S3, real torch in worker processes."""

import json
import os
import signal
import time

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_tensors

import models
from app.datasets.service import DatasetService
from app.main import create_app
from app.storage.s3 import store_from_settings
from tests.support.waiting import train, wait_for, wait_until

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]


def _model_bytes(settings, version: str) -> bytes:
    return store_from_settings(settings).get_bytes(bucket=settings.minio_model_bucket,
                                                   key=f"{version}/model.safetensors")


def _offline_accuracy(settings, version: str) -> float:
    """Rebuild the stored model from its file alone and evaluate it on the stored test split."""
    blob = _model_bytes(settings, version)
    model, header = models.load_model(blob), models.read_header(blob)
    images, labels = DatasetService(store=store_from_settings(settings), settings=settings).load_split(
        header["dataset"], "test")
    _, accuracy = models.evaluate(model, images, labels, mean=header["normalization"]["mean"],
                                  std=header["normalization"]["std"], device="cpu")
    return accuracy


@pytest.mark.parametrize("layers", [None, SMALL_NET], ids=["default", "custom"])
def test_train_store_reload_and_reproduce_accuracy(seeded_client, layers):
    body = {"dataset": "mnist", "epochs": 2, "batch_size": 16, **({"layers": layers} if layers else {})}
    accepted = seeded_client.post("/train", json=body)
    assert accepted.status_code == 202
    version = accepted.json()["version"]
    assert accepted.headers["location"] == f"/train/{version}"
    assert accepted.json()["status"] == "queued"

    record = wait_for(seeded_client, version)
    assert record["status"] == "succeeded", record["error"]
    assert len(record["history"]) == 2 and record["progress"]["fraction"] == 1.0
    assert record["started_at"] <= record["finished_at"]
    assert record["request"]["precision"] in ("fp32", "bf16") and record["attempts"] == 1  # auto, resolved
    assert record["layers"][-1] == {**record["layers"][-1], "type": "Linear", "out_features": 10}
    reproduced = _offline_accuracy(seeded_client.app.state.settings, version)
    assert reproduced == pytest.approx(record["metrics"]["test_accuracy"])


def test_same_seed_gives_bit_identical_weights(seeded_client):
    request = {"dataset": "fashion_mnist", "layers": SMALL_NET, "seed": 7, "batch_size": 8}
    versions = [train(seeded_client, **request)["version"] for _ in range(2)]
    other = train(seeded_client, dataset="fashion_mnist", layers=SMALL_NET, seed=8, batch_size=8)["version"]
    for v in (*versions, other):
        assert wait_for(seeded_client, v)["status"] == "succeeded"
    first, second, third = (load_tensors(_model_bytes(seeded_client.app.state.settings, v)) for v in (*versions, other))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


@pytest.mark.parametrize(("layers", "index", "words"), [
    ([{"type": "Conv3d", "out_channels": 4}], 0, "unknown layer type"),
    ([{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "colour": "red"}], 0, "colour"),
    ([{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "Linear", "out_features": 8}], 1, "Flatten"),
    ([{"type": "Flatten"}, {"type": "Linear", "out_features": 16384}, {"type": "Linear", "out_features": 16384}],
     None, "parameters"),
])
def test_bad_layers_are_422_naming_index_and_reason(seeded_client, layers, index, words):
    r = seeded_client.post("/train", json={"dataset": "mnist", "layers": layers})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["field"] == (f"layers[{index}]" if index is not None else "layers")
    assert words in body["detail"]
    assert all(j["request"]["layers"] != layers for j in seeded_client.get("/train").json()["items"])


def test_bad_fields_name_the_field(seeded_client):
    r = seeded_client.post("/train", json={"dataset": "mnist", "epochs": 0, "optimizer": "lbfgs"})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"epochs", "optimizer"}


def test_unknown_and_unseeded_datasets_are_404(client, seeded_client):
    r = seeded_client.post("/train", json={"dataset": "imagenet"})
    assert r.status_code == 404 and "imagenet" in r.json()["detail"]
    r = client.post("/train", json={"dataset": "mnist"})  # `client` has empty buckets
    assert r.status_code == 404 and "scv datasets seed mnist" in r.json()["detail"]


@pytest.mark.parametrize("version", ["../x", "a/b", "x" * 129, ".hidden", "a..b", "é", "a\x00b"])
def test_hostile_versions_never_reach_storage(seeded_client, version):
    r = seeded_client.post("/train", json={"dataset": "mnist", "version": version})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "version"
    settings = seeded_client.app.state.settings
    keys = [o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket)]
    assert not any(version in k for k in keys)


def test_reused_version_is_409(seeded_client):
    train(seeded_client, dataset="mnist", version="dup-1", layers=SMALL_NET)
    r = seeded_client.post("/train", json={"dataset": "mnist", "version": "dup-1"})
    assert r.status_code == 409 and "dup-1" in r.json()["detail"]
    wait_for(seeded_client, "dup-1")


def _long_job(client, **extra) -> str:
    # Batch size 1 over many epochs: long enough to act on while it runs.
    return train(client, dataset="mnist", layers=SMALL_NET, epochs=100, batch_size=1, **extra)["version"]


def test_cancel_running_job_stops_worker_and_keeps_no_model(seeded_client):
    version = _long_job(seeded_client)
    pid = _running_attempt(seeded_client, version, 1)["worker"]["pid"]
    # The API keeps answering while the job trains.
    assert seeded_client.get("/healthz").json() == {"status": "ok"}
    assert seeded_client.get(f"/train/{version}").json()["status"] == "running"

    r = seeded_client.delete(f"/train/{version}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert wait_for(seeded_client, version)["status"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    settings = seeded_client.app.state.settings
    store = store_from_settings(settings)
    # The model's objects go with the cancel; a checkpoint stored before it, with housekeeping's next sweep.
    wait_until(lambda: not list(store.list(bucket=settings.minio_model_bucket, prefix=f"{version}/")), timeout=30,
               what=f"no object left under {version}/")
    assert seeded_client.delete(f"/train/{version}").status_code == 409


def _running_attempt(client, version: str, attempt: int, *, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = wait_for(client, version, {"running"}, timeout=timeout)
        if record["attempts"] == attempt and record["worker"] and record["worker"]["pid"] != os.getpid():
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


def test_a_killed_worker_s_job_runs_again_as_a_new_attempt(seeded_client):
    version = _long_job(seeded_client)
    first = _running_attempt(seeded_client, version, 1)
    os.kill(first["worker"]["pid"], signal.SIGKILL)
    second = _running_attempt(seeded_client, version, 2)
    assert second["worker"]["pid"] != first["worker"]["pid"] and second["error"] is None
    assert seeded_client.delete(f"/train/{version}").json()["status"] == "cancelled"


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(seeded_settings, tmp_path):
    settings = seeded_settings.model_copy(update={"max_attempts": 1, "data_dir": tmp_path})
    with TestClient(create_app(settings)) as client:
        version = _long_job(client)
        os.kill(_running_attempt(client, version, 1)["worker"]["pid"], signal.SIGKILL)
        record = wait_for(client, version, timeout=15)
    assert record["status"] == "failed" and "SIGKILL" in record["error"] and "1 lost attempts" in record["error"]


def test_jobs_survive_an_api_restart(seeded_settings, tmp_path):
    # Its own catalog (in its data dir) and model bucket: the running job is handed back at shutdown.
    settings = seeded_settings.model_copy(update={"minio_model_bucket": "models-restart", "data_dir": tmp_path})
    with TestClient(create_app(settings)) as first:
        blocker = _long_job(first)
        queued = train(first, dataset="mnist", layers=SMALL_NET, batch_size=16)["version"]
        _running_attempt(first, blocker, 1)
        assert first.get(f"/train/{queued}").json()["status"] == "queued"
    with TestClient(create_app(settings)) as second:
        assert second.get(f"/train/{blocker}").json()["error"] is None  # handed back, not failed
        _running_attempt(second, blocker, 2)
        second.delete(f"/train/{blocker}")
        assert wait_for(second, queued)["status"] == "succeeded"


def _events(client, version: str, **headers) -> list[tuple[int, dict]]:
    events, fields = [], {}
    with client.stream("GET", f"/train/{version}/events", headers=headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:  # a blank line ends an event
                events.append((int(fields["id"]) if "id" in fields else None, json.loads(fields["data"])))
                fields = {}
    return events


def test_sse_streams_changes_until_terminal(seeded_client):
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, epochs=2, batch_size=8)["version"]
    events = _events(seeded_client, version)
    statuses = [record["status"] for _, record in events]
    assert statuses[-1] == "succeeded"
    assert statuses[0] in ("queued", "running")
    ids = [event_id for event_id, _ in events]
    assert all(i is not None for i in ids) and ids == sorted(set(ids))  # every event has a new, growing id


def test_sse_reconnecting_with_last_event_id_gets_only_newer_events(seeded_client):
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, epochs=10, batch_size=1)["version"]
    everything = _events(seeded_client, version)
    assert len(everything) >= 3
    middle = everything[len(everything) // 2][0]
    replay = _events(seeded_client, version, **{"Last-Event-ID": str(middle)})
    assert replay and all(event_id > middle for event_id, _ in replay)
    assert replay[-1][1]["status"] == "succeeded"
    assert _events(seeded_client, version, **{"Last-Event-ID": str(everything[-1][0])}) == []


def test_list_jobs_newest_first_with_status_filter(seeded_client):
    a = train(seeded_client, dataset="mnist", layers=SMALL_NET)["version"]
    b = train(seeded_client, dataset="mnist", layers=SMALL_NET)["version"]
    wait_for(seeded_client, a)
    wait_for(seeded_client, b)
    versions = [j["version"] for j in seeded_client.get("/train").json()["items"]]
    assert versions.index(b) < versions.index(a)
    succeeded = seeded_client.get("/train", params={"status": "succeeded"}).json()["items"]
    assert {a, b} <= {j["version"] for j in succeeded}
    assert all(j["status"] == "succeeded" for j in succeeded)


def test_labels_are_kept_and_filter_the_job_pages(seeded_client):
    alice = train(seeded_client, dataset="mnist", layers=SMALL_NET, labels={"owner": "alice", "exp": "lr-1"})
    bob = train(seeded_client, dataset="mnist", layers=SMALL_NET, labels={"owner": "bob", "exp": "lr-1"})
    assert alice["labels"] == {"owner": "alice", "exp": "lr-1"}
    page = seeded_client.get("/train", params=[("label", "owner:alice"), ("label", "exp:lr-1")]).json()
    assert [job["version"] for job in page["items"]] == [alice["version"]]
    both = seeded_client.get("/train", params={"label": "exp:lr-1"}).json()["items"]
    assert [job["version"] for job in both] == [bob["version"], alice["version"]]
    r = seeded_client.post("/train", json={"dataset": "mnist", "labels": {"Not A Key": "x"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("labels")
    r = seeded_client.get("/train", params={"label": "no-colon"})
    assert r.status_code == 422 and r.json()["field"] == "label"
    for job in (alice, bob):
        assert wait_for(seeded_client, job["version"])["status"] == "succeeded"


def test_job_pages_follow_their_cursor_and_refuse_a_tampered_one(seeded_client):
    first = seeded_client.get("/train", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next"]
    second = seeded_client.get("/train", params={"limit": 1, "cursor": first["next"]}).json()
    assert second["items"][0]["created_at"] <= first["items"][0]["created_at"]
    assert second["items"][0]["version"] != first["items"][0]["version"]
    r = seeded_client.get("/train", params={"cursor": first["next"][:-2] + "zz"})
    assert r.status_code == 422 and r.json()["field"] == "cursor"
