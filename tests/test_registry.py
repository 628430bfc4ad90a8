"""The model registry through real HTTP: listing, downloads (ETag, Range, 304, HEAD), metadata, delete, expiry."""

import hashlib
import logging
from datetime import UTC, datetime, timedelta

import pytest
import torch
from fastapi.testclient import TestClient

import models
from app.errors import StorageUnavailable
from app.main import create_app
from app.storage.s3 import Store
from tests.conftest import make_settings
from tests.jobwait import train, wait_for

TINY = [{"type": "Flatten"}, {"type": "Linear", "out_features": 5}]
SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def put_model(store: Store, bucket: str, version: str, *, dataset: str = "mnist",
              created_at: str | None = None, blob: bytes | None = None, job: str | None = None) -> bytes:
    """Write a small valid model as the worker does: metadata.json first, model.safetensors last."""
    layers = models.resolve_layers(TINY, input_shape=(1, 4, 4), num_classes=3)
    norm = {"mean": [0.5], "std": [0.25]}
    if blob is None:
        blob = models.save_model(models.seeded_model(layers, seed=len(version)), layers=layers,
                                 input_shape=[1, 4, 4], classes=["a", "b", "c"], normalization=norm,
                                 dataset=dataset, version=version)
    created_at = created_at or iso(datetime.now(UTC))
    metadata = {"version": version, "dataset": dataset, "created_at": created_at, "request": {"epochs": 1},
                "layers": layers, "metrics": {"test_accuracy": 0.5}, "history": [], "classes": ["a", "b", "c"],
                "normalization": norm, "input_shape": [1, 4, 4], "epochs": 1, "num_parameters": 88,
                "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob), "libraries": {}}
    if job:
        store.put_json(bucket=bucket, key=f"{version}/job.json", value={
            "version": version, "dataset": dataset, "status": job, "request": {"epochs": 1}, "layers": layers,
            "progress": {"epoch": 1, "epochs": 1, "step": 1, "steps": 1, "fraction": 1.0}, "metrics": None,
            "history": [], "error": None, "created_at": created_at, "started_at": None, "finished_at": None})
    store.put_json(bucket=bucket, key=f"{version}/metadata.json", value=metadata)
    store.put(bucket=bucket, key=f"{version}/model.safetensors", data=blob)
    return blob


def keys(store: Store, bucket: str, prefix: str = "") -> list[str]:
    return [o.key for o in store.list(bucket=bucket, prefix=prefix)]


@pytest.fixture(scope="module")
def trained(seeded_client, seeded_settings):
    """One real model trained through POST /train on the seeded tiny MNIST."""
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, batch_size=16)["version"]
    assert wait_for(seeded_client, version)["status"] == "succeeded"
    return version


def test_download_is_byte_identical_with_etag_ranges_304_and_head(seeded_client, seeded_settings, store, trained):
    stored = store.get_bytes(bucket=seeded_settings.minio_model_bucket, key=f"{trained}/model.safetensors")
    r = seeded_client.get(f"/models/{trained}")
    assert r.status_code == 200 and r.content == stored
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["content-length"] == str(len(stored))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{trained}.safetensors"'
    assert r.headers["accept-ranges"] == "bytes"
    listed = {i["version"]: i for i in seeded_client.get("/models", params={"limit": 1000}).json()["items"]}
    assert listed[trained]["sha256"] == digest and listed[trained]["size_bytes"] == len(stored)

    part = seeded_client.get(f"/models/{trained}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == stored[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(stored)}"
    assert part.headers["content-length"] == "100"
    assert seeded_client.get(f"/models/{trained}", headers={"Range": "bytes=-10"}).content == stored[-10:]
    tail = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes={len(stored) - 5}-"})
    assert tail.status_code == 206 and tail.content == stored[-5:]
    assert tail.headers["content-range"] == f"bytes {len(stored) - 5}-{len(stored) - 1}/{len(stored)}"
    assert tail.headers["content-length"] == "5"
    clamped = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes=10-{len(stored) * 2}"})
    assert clamped.status_code == 206 and clamped.content == stored[10:]
    assert clamped.headers["content-range"] == f"bytes 10-{len(stored) - 1}/{len(stored)}"
    beyond = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes={len(stored)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(stored)}"
    assert beyond.headers["content-type"] == "application/problem+json"
    several = seeded_client.get(f"/models/{trained}", headers={"Range": "bytes=0-1,5-9"})
    assert several.status_code == 200 and several.content == stored  # documented: multiple ranges → whole file

    same = seeded_client.get(f"/models/{trained}", headers={"If-None-Match": r.headers["etag"]})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == r.headers["etag"]
    other = seeded_client.get(f"/models/{trained}", headers={"If-None-Match": '"0000"'})
    assert other.status_code == 200 and other.content == stored

    head = seeded_client.head(f"/models/{trained}")
    assert head.status_code == 200 and head.content == b""
    assert {k: head.headers[k] for k in ("etag", "content-length", "content-disposition")} == {
        k: r.headers[k] for k in ("etag", "content-length", "content-disposition")}


def test_metadata_describes_the_training(seeded_client, trained):
    r = seeded_client.get(f"/models/{trained}/metadata")
    assert r.status_code == 200
    meta = r.json()
    job = seeded_client.get(f"/train/{trained}").json()
    assert meta["version"] == trained and meta["dataset"] == "mnist"
    assert meta["request"] == job["request"] and meta["layers"] == job["layers"]
    assert meta["metrics"] == job["metrics"] and meta["history"] == job["history"]
    assert len(meta["classes"]) == 10 and len(meta["normalization"]["mean"]) == 1
    assert set(meta["libraries"]) >= {"torch", "safetensors"}
    assert meta["sha256"] == seeded_client.get(f"/models/{trained}").headers["etag"].strip('"')
    assert meta["expires_at"] is None


def test_models_in_training_are_409_and_deleting_a_cancelled_job_leaves_nothing(seeded_client, seeded_settings,
                                                                                store):
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, epochs=100, batch_size=1)["version"]
    wait_for(seeded_client, version, {"running"})
    for method, path in (("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", "")):
        r = seeded_client.request(method, f"/models/{version}{path}")
        assert r.status_code == 409, (method, path)
        if method != "HEAD":
            assert r.json()["job"] == f"/train/{version}" and r.headers["content-type"] == "application/problem+json"
    seeded_client.delete(f"/train/{version}")
    assert wait_for(seeded_client, version)["status"] == "cancelled"
    r = seeded_client.get(f"/models/{version}")
    assert r.status_code == 404 and "cancelled" in r.json()["detail"]
    assert seeded_client.delete(f"/models/{version}").status_code == 204
    assert keys(store, seeded_settings.minio_model_bucket, f"{version}/") == []
    assert seeded_client.get(f"/train/{version}").status_code == 404


def test_delete_removes_every_object_and_the_model_is_gone(client, settings, store):
    bucket = settings.minio_model_bucket
    put_model(store, bucket, "doomed", job="succeeded")
    put_model(store, bucket, "doomed-2")  # shares the name's start: must survive
    assert client.get("/train/doomed").status_code == 200  # now in the job cache too
    assert client.get("/models/doomed").status_code == 200
    assert client.delete("/models/doomed").status_code == 204
    assert keys(store, bucket, "doomed/") == []
    assert [i["version"] for i in client.get("/models").json()["items"]] == ["doomed-2"]
    for path in ("/models/doomed", "/models/doomed/metadata", "/train/doomed"):
        assert client.get(path).status_code == 404, path
    assert client.post("/models/doomed/predict", json={"images": [[[0] * 4] * 4]}).status_code == 404
    assert client.delete("/models/doomed").status_code == 404
    assert len(keys(store, bucket, "doomed-2/")) == 2


def test_listing_filters_and_pages_newest_first(client, settings, store):
    bucket, start = settings.minio_model_bucket, datetime(2026, 1, 1, tzinfo=UTC)
    made = {f"m{i:02d}": ("mnist" if i % 3 else "cifar10", iso(start + timedelta(minutes=i % 7, seconds=i)))
            for i in range(11)}
    for version, (dataset, created) in made.items():
        put_model(store, bucket, version, dataset=dataset, created_at=created)
    store.put_json(bucket=bucket, key="queued-1/job.json", value={"status": "queued"})  # no model: not listed
    newest_first = sorted(made, key=lambda v: (made[v][1], v), reverse=True)

    seen, cursor, pages = [], None, 0
    while True:
        body = client.get("/models", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
        seen += [i["version"] for i in body["items"]]
        pages, cursor = pages + 1, body["next"]
        if cursor is None:
            break
    assert seen == newest_first and pages == 3
    item = client.get("/models", params={"limit": 1}).json()["items"][0]
    assert set(item) == {"version", "dataset", "created_at", "size_bytes", "sha256", "test_accuracy", "epochs",
                         "num_parameters", "expires_at"}
    cifar = client.get("/models", params={"dataset": "cifar10"}).json()
    assert [i["version"] for i in cifar["items"]] == [v for v in newest_first if made[v][0] == "cifar10"]
    assert cifar["next"] is None
    for bad in ({"limit": 0}, {"limit": 1001}, {"cursor": "not-a-cursor"}):
        r = client.get("/models", params=bad)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", bad
    assert len(client.get("/models", params={"limit": 1000}).json()["items"]) == 11


def listed(client) -> list[str]:
    return [i["version"] for i in client.get("/models", params={"limit": 1000}).json()["items"]]


def test_listing_follows_storage_not_the_process(client, settings, store):
    bucket, now = settings.minio_model_bucket, datetime.now(UTC)
    put_model(store, bucket, "first", created_at=iso(now - timedelta(minutes=2)))
    assert listed(client) == ["first"]
    store.put_json(bucket=bucket, key="second/job.json", value={"version": "second", "status": "running"})
    assert listed(client) == ["first"]  # still training: not listed
    put_model(store, bucket, "second", created_at=iso(now - timedelta(minutes=1)))  # a worker finished it
    assert listed(client) == ["second", "first"]  # at once
    store.delete_prefix(bucket=bucket, prefix="first/")  # another replica deleted it
    assert client.get("/models/first").status_code == 404  # downloads always ask storage
    assert listed(client) == ["second"]
    store.delete_prefix(bucket=bucket, prefix="second/")
    client.app.state.registry.refresh_s = 0  # the next full LIST (at most REFRESH_S away) notices it
    assert listed(client) == []
    put_model(store, bucket, "third")
    with TestClient(create_app(settings)) as restarted:
        assert listed(restarted) == ["third"]


@pytest.mark.parametrize("path", ["..%2Fvictim", "a%2Fb", "x" * 129, "..", ".hidden", "%2E%2E%2Fvictim",
                                  "victim%2F..%2Fvictim", "..%2Fmetadata"])
def test_hostile_versions_are_refused_without_touching_other_models(client, settings, store, path):
    bucket = settings.minio_model_bucket
    put_model(store, bucket, "victim")
    for method, suffix in (("GET", ""), ("GET", "/metadata"), ("DELETE", ""), ("POST", "/predict")):
        r = client.request(method, f"/models/{path}{suffix}", json={"images": [[[0] * 4] * 4]})
        assert r.status_code in (404, 405, 422), (method, suffix, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
    assert len(keys(store, bucket, "victim/")) == 2


def test_unknown_model_is_404(client):
    for method, suffix in (("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", "")):
        r = client.request(method, f"/models/never-trained{suffix}")
        assert r.status_code == 404, (method, suffix)
    assert "never-trained" in client.get("/models/never-trained").json()["detail"]


def test_expired_models_are_neither_listed_nor_served(s3, store, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_MODEL_TTL_DAYS="1")
    with TestClient(create_app(settings)) as client:
        bucket, now = settings.minio_model_bucket, datetime.now(UTC)
        put_model(store, bucket, "old", created_at=iso(now - timedelta(days=2)))
        put_model(store, bucket, "fresh", created_at=iso(now - timedelta(hours=1)))
        items = client.get("/models").json()["items"]
        assert [i["version"] for i in items] == ["fresh"]
        assert items[0]["expires_at"] == iso(now - timedelta(hours=1) + timedelta(days=1))
        for suffix in ("", "/metadata"):
            r = client.get(f"/models/old{suffix}")
            assert r.status_code == 404 and "expired" in r.json()["detail"]
        assert client.get("/models/fresh/metadata").json()["expires_at"] == items[0]["expires_at"]
        rules = store._client.get_bucket_lifecycle(bucket_name=bucket).rules  # the lifecycle rule is in place
        assert [r.expiration.days for r in rules] == [1]
        assert client.delete("/models/old").status_code == 204  # expired leftovers can still be removed


def test_a_refused_lifecycle_rule_is_a_warning_not_a_failed_start(s3, store, tmp_path, monkeypatch, caplog):
    # SeaweedFS accepts lifecycle rules; a server that refuses them is simulated here.
    def refuse(self, *, bucket, days):
        raise StorageUnavailable("lifecycle is not implemented")

    monkeypatch.setattr(Store, "set_expiry", refuse)
    settings = make_settings(s3, tmp_path, SCV_MODEL_TTL_DAYS="3")
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
        put_model(store, settings.minio_model_bucket, "kept", created_at=iso(datetime.now(UTC)))
        assert [i["version"] for i in client.get("/models").json()["items"]] == ["kept"]
    assert any("lifecycle" in r.getMessage() for r in caplog.records)


def test_registry_load_returns_the_network_and_its_metadata(client, settings, store):
    put_model(store, settings.minio_model_bucket, "loadable")
    net, meta = client.app.state.registry.load("loadable")
    assert isinstance(net, torch.nn.Sequential) and not net.training
    assert meta["classes"] == ["a", "b", "c"] and meta["input_shape"] == [1, 4, 4]
    assert client.app.state.registry.load("loadable")[0] is net  # the in-process LRU
