"""Snapshots: the weights a training job keeps at initialisation and after every `snapshot_every`-th epoch and the
last, as model files beside the model; listed, downloaded as the model is, deleted with it, never left by a job
that ended without one."""

import hashlib

import pytest
import torch
from safetensors.torch import load as load_tensors
from sqlalchemy import select

import models
from app.datasets.service import DatasetService
from app.db.tables import Model
from app.jobs.lease import Lease
from app.jobs.queue import JobQueue, LeaseLost
from app.jobs.snapshots import Snapshots
from app.registry import publishing
from app.registry.rebuild import rebuild_catalog
from app.storage.s3 import store_from_settings
from tests.support.catalog import add_job, open_catalog
from tests.support.waiting import train, wait_for, wait_until

NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "BatchNorm2d"}, {"type": "ReLU"},
       {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]


def keys(client, prefix: str) -> list[str]:
    settings = client.app.state.settings
    return sorted(o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket, prefix=prefix))


def trained(client, **body) -> dict:
    record = wait_for(client, train(client, dataset="mnist", layers=NET, batch_size=8, **body)["version"])
    assert record["status"] == "succeeded", record["error"]
    return record


def epochs_kept(client, version: str) -> list[int]:
    return [item["epoch"] for item in client.get(f"/models/{version}/snapshots").json()["items"]]


@pytest.fixture(scope="module")
def three(seeded_client) -> dict:
    """A job of three epochs, trained in float32, keeping every epoch (the default)."""
    return trained(seeded_client, epochs=3, precision="fp32")


def test_a_three_epoch_job_keeps_epochs_0_to_3_as_model_files(seeded_client, seeded_settings, three):
    version = three["version"]
    items = seeded_client.get(f"/models/{version}/snapshots").json()["items"]
    assert [item["epoch"] for item in items] == [0, 1, 2, 3]
    assert items[0]["metrics"] is None and [item["metrics"] for item in items[1:]] == three["history"]
    meta = seeded_client.get(f"/models/{version}/metadata").json()
    assert meta["snapshots"] == items and meta["request"]["snapshot_every"] == 1
    assert keys(seeded_client, f"{version}/snapshots/") == [f"{version}/snapshots/{e}.safetensors" for e in range(4)]

    images, labels = DatasetService(store=store_from_settings(seeded_settings), settings=seeded_settings).load_split(
        "mnist", "test")
    files = {}
    for item in items:
        blob = files[item["epoch"]] = seeded_client.get(f"/models/{version}/snapshots/{item['epoch']}").content
        assert len(blob) == item["size_bytes"] and hashlib.sha256(blob).hexdigest() == item["sha256"]
        net, header = models.load_model(blob), models.read_header(blob)
        assert header["version"] == version and header["layers"] == three["layers"]
        if item["epoch"]:  # evaluated in float32, as the history measured it at the training precision (fp32)
            _, accuracy = models.evaluate(net, images, labels, mean=header["normalization"]["mean"],
                                          std=header["normalization"]["std"], device="cpu", precision="fp32")
            assert abs(accuracy - item["metrics"]["test_accuracy"]) <= 0.005

    initial = models.seeded_model(three["layers"], seed=three["request"]["seed"]).state_dict()
    model_file = seeded_client.get(f"/models/{version}").content
    assert files[3] == model_file and items[3]["sha256"] == meta["sha256"]  # the last epoch's weights are the model
    last, model = load_tensors(files[3]), load_tensors(model_file)
    for kept, want in ((load_tensors(files[0]), initial), (last, model)):
        assert kept.keys() == want.keys() and all(torch.equal(kept[k], want[k]) for k in kept)
    assert not torch.equal(load_tensors(files[1])["0.weight"], initial["0.weight"])


def test_snapshot_every_picks_the_epochs_and_0_keeps_none(seeded_client):
    every_2, never = trained(seeded_client, epochs=5, snapshot_every=2), trained(seeded_client, snapshot_every=0)
    assert epochs_kept(seeded_client, every_2["version"]) == [0, 2, 4, 5]
    assert keys(seeded_client, f"{every_2['version']}/snapshots/") == [
        f"{every_2['version']}/snapshots/{e}.safetensors" for e in (0, 2, 4, 5)]
    missing = seeded_client.get(f"/models/{every_2['version']}/snapshots/3")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["epoch"] == 3 and missing.json()["snapshot_every"] == 2
    assert "epoch 3" in missing.json()["detail"] and "snapshot_every=2" in missing.json()["detail"]

    assert epochs_kept(seeded_client, never["version"]) == []
    assert keys(seeded_client, f"{never['version']}/snapshots/") == []
    assert seeded_client.get(f"/models/{never['version']}/metadata").json()["snapshots"] == []
    gone = seeded_client.get(f"/models/{never['version']}/snapshots/0")
    assert gone.status_code == 404 and gone.json()["snapshot_every"] == 0


@pytest.mark.parametrize("value", [-1, 101, "often", 1.5])
def test_a_bad_snapshot_every_is_422_naming_it(seeded_client, value):
    r = seeded_client.post("/train", json={"dataset": "mnist", "snapshot_every": value})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["snapshot_every"]


def test_a_snapshot_downloads_as_the_model_does(seeded_client, three):
    version = three["version"]
    item = seeded_client.get(f"/models/{version}/snapshots").json()["items"][2]
    whole = seeded_client.get(f"/models/{version}/snapshots/2")
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers["etag"] == f'"{item["sha256"]}"' and whole.headers["x-scv-version"] == version
    assert whole.headers["content-length"] == str(item["size_bytes"]) and "last-modified" in whole.headers
    assert whole.headers["content-disposition"] == f'attachment; filename="{version}.epoch-2.safetensors"'
    same = seeded_client.get(f"/models/{version}/snapshots/2", headers={"If-None-Match": whole.headers["etag"]})
    assert same.status_code == 304 and same.content == b""
    head = seeded_client.head(f"/models/{version}/snapshots/2")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == whole.headers["etag"]
    part = seeded_client.get(f"/models/{version}/snapshots/2", headers={"Range": "bytes=8-99"})
    assert part.status_code == 206 and part.content == whole.content[8:100]
    assert part.headers["content-range"] == f"bytes 8-99/{item['size_bytes']}"
    beyond = seeded_client.get(f"/models/{version}/snapshots/2", headers={"Range": f"bytes={item['size_bytes']}-"})
    assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/problem+json"

    assert seeded_client.put("/aliases/snapshot-test", json={"version": version}).status_code == 200
    try:
        aliased = seeded_client.get("/models/@snapshot-test/snapshots/2")
        assert aliased.content == whole.content and aliased.headers["x-scv-version"] == version
        assert epochs_kept(seeded_client, "@snapshot-test") == [0, 1, 2, 3]
    finally:
        seeded_client.delete("/aliases/snapshot-test")
    assert seeded_client.get(f"/models/{version}/snapshots/x").status_code == 422


def test_deleting_the_model_deletes_its_snapshots(seeded_client):
    version = trained(seeded_client)["version"]
    assert len(keys(seeded_client, f"{version}/snapshots/")) == 2
    assert seeded_client.delete(f"/models/{version}").status_code == 204
    assert keys(seeded_client, f"{version}/") == []
    assert seeded_client.get(f"/models/{version}/snapshots").status_code == 404


def test_a_cancelled_job_leaves_no_snapshot(seeded_client):
    version = train(seeded_client, dataset="mnist", layers=NET, epochs=100, batch_size=1)["version"]
    wait_until(lambda: len(keys(seeded_client, f"{version}/snapshots/")) >= 2, what="snapshots while training")
    assert seeded_client.delete(f"/train/{version}").json()["status"] == "cancelled"
    assert wait_for(seeded_client, version)["status"] == "cancelled"
    # no snapshot and no model object; its checkpoints are housekeeping's (test_resume.py)
    assert [key for key in keys(seeded_client, f"{version}/") if "/checkpoints/" not in key] == []


def test_a_job_queued_again_keeps_its_snapshots_and_loses_them_when_it_ends_without_a_model(request, tmp_path, store,
                                                                                           settings):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    db = open_catalog(request, tmp_path, "sqlite")
    queue = JobQueue(db, lease_seconds=30, max_attempts=2, on_end=publishing.ended_without_model(store, bucket=bucket))

    def lost_attempt(version: str) -> str:  # the attempt stores snapshots 0 and 1, then its worker dies
        claim = queue.claim()
        assert claim.version == version
        for epoch in (0, 1):
            publishing.store_snapshot(store, bucket=bucket, version=version, epoch=epoch, blob=b"weights")
        return queue.release(claim, reason="killed by SIGKILL")

    try:
        for version in ("cancelled", "failing"):
            add_job(db, version, "queued")
            assert lost_attempt(version) == "queued"  # the next attempt resumes with them
            assert [o.key for o in store.list(bucket=bucket, prefix=f"{version}/")] == [
                f"{version}/snapshots/0.safetensors", f"{version}/snapshots/1.safetensors"]
            if version == "cancelled":
                assert queue.cancel(version)["status"] == "cancelled"  # cancelled while queued again
        assert lost_attempt("failing") == "failed"
        assert list(store.list(bucket=bucket)) == []
    finally:
        db.dispose()


def test_a_worker_that_lost_its_job_stores_no_snapshot(request, tmp_path, store, settings):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    db = open_catalog(request, tmp_path, "sqlite")
    queue = JobQueue(db, lease_seconds=30, max_attempts=3, on_end=publishing.ended_without_model(store, bucket=bucket))
    add_job(db, "taken", "queued")
    try:
        first = queue.claim()
        net = models.seeded_model(models.resolve_layers(NET, input_shape=(1, 8, 8), num_classes=3), seed=0)
        kept = Snapshots(store=store, bucket=bucket, version="taken", every=1, model_file=lambda _: b"file",
                         lease=Lease(queue=queue, claim=first, record=queue.get("taken")), resume=None)
        kept(0, net, None, False)
        assert queue.release(first, reason="its lease lapsed") == "queued"
        assert queue.claim().attempt == first.attempt + 1  # another worker holds the job now
        with pytest.raises(LeaseLost):
            kept(1, net, {"epoch": 1}, False)  # the first attempt's worker, still training, reaches the end of epoch 1
        assert [o.key for o in store.list(bucket=bucket)] == ["taken/snapshots/0.safetensors"]
        assert [entry["epoch"] for entry in kept.entries] == [0]
    finally:
        db.dispose()


def test_rebuild_lists_no_snapshot_as_a_model_and_keeps_their_listing(seeded_client, seeded_settings, request,
                                                                     tmp_path, three):
    db = open_catalog(request, tmp_path, "sqlite")  # an empty catalog, rebuilt from the bucket
    try:
        rebuild_catalog(store=store_from_settings(seeded_settings), db=db, bucket=seeded_settings.minio_model_bucket)
        with db.read() as conn:
            rows = dict(conn.execute(select(Model.version, Model.meta)).all())
    finally:
        db.dispose()
    assert all("/" not in version and "snapshot" not in version for version in rows)
    listed = seeded_client.get(f"/models/{three['version']}/snapshots").json()["items"]
    assert rows[three["version"]]["snapshots"] == listed
