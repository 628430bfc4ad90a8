"""`rebuild_catalog`: the model catalog re-created from a bucket an earlier release wrote, twice, on both databases."""

import multiprocessing
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db.engine import db_now
from app.db.tables import Alias, Deletion, Job, Label, Model
from app.jobs.local import LocalPool
from app.jobs.queue import JobQueue
from app.main import create_app
from app.registry import catalog, publishing
from app.registry.rebuild import LOST, NO_MODEL, rebuild_catalog
from tests.support.catalog import add_job, iso, open_catalog
from tests.support.registry import put_model
from tests.support.s3 import make_settings

NOW = datetime.now(UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    database = open_catalog(request, tmp_path, request.param)
    yield database
    database.dispose()


def old_job(store, bucket: str, version: str, status: str, *, minutes: int = 0, **fields) -> dict:
    """A `<version>/job.json` as releases before the catalog wrote it."""
    record = {"version": version, "dataset": "mnist", "status": status, "request": {"epochs": 2}, "layers": [],
              "progress": {"epoch": 1, "epochs": 2, "step": 3, "steps": 6, "fraction": 0.5}, "metrics": None,
              "history": [], "error": None, "created_at": iso(NOW - timedelta(minutes=minutes)),
              "started_at": None if status == "queued" else iso(NOW), "finished_at": None,
              **({"worker": {"host": "old", "pid": 1}} if status != "queued" else {}), **fields}
    store.put_json(bucket=bucket, key=f"{version}/job.json", value=record)
    return record


def old_bucket(store, bucket: str) -> None:
    """Every kind of version an earlier release may have left, plus things that are not versions."""
    for version, minutes in (("done", 30), ("no-record", 20), ("crashed-after-upload", 10)):
        put_model(store, bucket, version, created_at=iso(NOW - timedelta(minutes=minutes)))
    old_job(store, bucket, "done", "succeeded", minutes=31, finished_at=iso(NOW))
    old_job(store, bucket, "crashed-after-upload", "running", minutes=11)
    old_job(store, bucket, "waiting", "queued", minutes=5)
    old_job(store, bucket, "was-running", "running", minutes=4)
    old_job(store, bucket, "broke", "failed", minutes=3, error="boom", finished_at=iso(NOW))
    old_job(store, bucket, "lost-model", "succeeded", minutes=2, finished_at=iso(NOW))
    put_model(store, bucket, "wrong-size")
    meta = store.get_json(bucket=bucket, key="wrong-size/metadata.json")
    store.put_json(bucket=bucket, key="wrong-size/metadata.json", value={**meta, "size_bytes": meta["size_bytes"] + 1})
    put_model(store, bucket, "half-written")
    store.delete(bucket=bucket, key="half-written/model.safetensors")  # metadata without its model
    store.put_json(bucket=bucket, key="garbled/job.json", value=["not", "a", "record"])
    old_job(store, bucket, "misshapen", "failed", progress={"epoch": "one"})  # not a JobRecord: left out, logged
    store.put(bucket=bucket, key="notes.txt", data=b"not a version")
    store.put(bucket=bucket, key="done/checkpoint-1.safetensors", data=b"ignored")


def snapshot(db) -> dict:
    with db.read() as conn:
        return {table.__tablename__: sorted(tuple(row) for row in conn.execute(select(table)))
                for table in (Model, Job, Label, Alias, Deletion)}


def test_rebuild_lists_every_model_imports_every_job_and_changes_nothing_twice(db, settings, store):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    old_bucket(store, bucket)
    counts = rebuild_catalog(store=store, db=db, bucket=bucket)
    assert counts == {"models_added": 3, "models_updated": 0, "models_removed": 0, "jobs_imported": 7, "skipped": 3}

    with db.read() as conn:
        rows, more = catalog.page_models(conn, limit=10)
        jobs = {row.version: row for row in conn.execute(select(Job))}
    assert [row.version for row in rows] == ["crashed-after-upload", "no-record", "done"] and not more
    meta = store.get_json(bucket=bucket, key="done/metadata.json")
    assert rows[2].sha256 == meta["sha256"] and rows[2].size_bytes == meta["size_bytes"]
    assert {v: j.status for v, j in jobs.items()} == {
        "done": "succeeded", "no-record": "succeeded", "crashed-after-upload": "succeeded", "waiting": "queued",
        "was-running": "failed", "broke": "failed", "lost-model": "failed"}
    assert jobs["was-running"].error == LOST and jobs["lost-model"].error == NO_MODEL
    assert jobs["broke"].error == "boom" and jobs["waiting"].attempts == 0 and jobs["waiting"].finished_at is None
    assert jobs["done"].worker == {"host": "old", "pid": 1} and jobs["done"].progress["fraction"] == 0.5
    assert jobs["no-record"].request == {"epochs": 1} and jobs["no-record"].progress["fraction"] == 1.0

    before = snapshot(db)
    again = rebuild_catalog(store=store, db=db, bucket=bucket)
    assert again == {"models_added": 0, "models_updated": 0, "models_removed": 0, "jobs_imported": 0, "skipped": 3}
    assert snapshot(db) == before  # the three bad objects are met again, and left out again


def test_rebuild_repairs_rows_that_disagree_with_the_bucket_and_leaves_the_queue_alone(db, settings, store):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    put_model(store, bucket, "kept", db=db, labels={"owner": "alice"})
    put_model(store, bucket, "gone", db=db)
    put_model(store, bucket, "training", created_at=iso(NOW))  # objects of a job still running in the queue
    put_model(store, bucket, "deleting", created_at=iso(NOW))  # objects a delete is still removing
    with db.write() as conn:
        conn.execute(update(Model).where(Model.version == "kept").values(test_accuracy=0.01))  # a stale row
        conn.execute(update(Job).where(Job.version == "kept").values(status="succeeded", revision=7))
        catalog.begin_deletion(conn, "deleting", requested_at=iso(NOW))
    store.delete_prefix(bucket=bucket, prefix="gone/")  # its bytes are lost
    add_job(db, "training", "running")
    counts = rebuild_catalog(store=store, db=db, bucket=bucket)
    assert counts == {"models_added": 0, "models_updated": 1, "models_removed": 1, "jobs_imported": 0, "skipped": 0}
    with db.read() as conn:
        rows, _ = catalog.page_models(conn, limit=10)
        assert [(r.version, r.test_accuracy, r.labels) for r in rows] == [("kept", 0.5, {"owner": "alice"})]
        assert catalog.job_status(conn, "training") == "running"  # the queue's row is never touched
        assert conn.execute(select(Job.revision).where(Job.version == "kept")).scalar() == 7
        assert catalog.deletion_pending(conn, "deleting") and catalog.job_status(conn, "deleting") is None
    assert rebuild_catalog(store=store, db=db, bucket=bucket)["models_updated"] == 0


def test_a_job_failed_through_lost_attempts_leaves_no_objects_and_rebuild_lists_none(db, settings, store):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    queue = JobQueue(db, lease_seconds=0.2, max_attempts=2,
                     on_end=publishing.ended_without_model(store, bucket=bucket))
    add_job(db, "lost", "queued")
    add_job(db, "stopped", "queued")
    assert queue.release(queue.claim(), reason="killed by SIGKILL") == "queued"  # "lost": attempt 1 lost
    last = queue.claim()  # "lost" again: its worker stored the model, then died before recording success
    assert last.version == "lost"
    cancelled = queue.claim()  # "stopped": its model stored too, then cancelled and its worker stopped
    for version in ("lost", "stopped"):
        put_model(store, bucket, version, created_at=iso(NOW))
    with db.write() as conn:  # the last attempt's lease lapses
        conn.execute(update(Job).where(Job.version == "lost").values(lease_until=db_now() - 5))
    queue.cancel("stopped")
    assert queue.reap() == ["lost"]
    assert queue.release(cancelled, reason="stopped") == "cancelled"
    assert catalog_statuses(db) == {"lost": "failed", "stopped": "cancelled"}
    assert {info.key for info in store.list(bucket=bucket)} == set()  # neither left metadata.json nor the model

    for version in ("lost", "stopped"):  # objects left by an older release, or a removal that failed: not a model
        put_model(store, bucket, version, created_at=iso(NOW))
    counts = rebuild_catalog(store=store, db=db, bucket=bucket)
    assert counts["models_added"] == 0 and counts["jobs_imported"] == 0
    with db.read() as conn:
        assert catalog.page_models(conn, limit=10)[0] == []
    assert catalog_statuses(db) == {"lost": "failed", "stopped": "cancelled"}


class SlowModelUpload:
    """A store whose model-file upload never completes (the fault: a cancel arrives mid-upload); all else is real."""

    def __init__(self, store, started):
        self.store, self.started = store, started

    def put_json(self, **kwargs):
        self.store.put_json(**kwargs)

    def put(self, **kwargs):
        self.started.set()
        time.sleep(3600)


def _publish_in_child(store, bucket, version, started, slow) -> None:
    blob = put_model(store, bucket, version, created_at=iso(NOW))  # a valid model's bytes, to store again
    metadata = store.get_json(bucket=bucket, key=f"{version}/metadata.json")
    publishing.delete_objects(store, bucket=bucket, version=version)
    if slow:
        publishing.store_objects(SlowModelUpload(store, started), bucket=bucket, metadata=metadata, blob=blob)
    publishing.store_objects(store, bucket=bucket, metadata=metadata, blob=blob)
    started.set()


@pytest.mark.parametrize("slow", [True, False], ids=["mid-upload", "after-success"])
def test_a_cancel_during_publishing_leaves_a_complete_model_or_nothing(db, settings, store, slow):
    bucket = settings.minio_model_bucket
    store.ensure_buckets(bucket)
    queue = JobQueue(db, lease_seconds=30, max_attempts=3,
                     on_end=publishing.ended_without_model(store, bucket=bucket))
    add_job(db, "publishing", "queued")
    claim = queue.claim()
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_publish_in_child, args=(store, bucket, "publishing", started, slow))
    child.start()
    pool = LocalPool(queue=queue, env={}, slots=1)
    pool._running["publishing"] = (claim, child)  # the pool's child, as _launch records it
    assert started.wait(30)
    if not slow:  # the child stored the model and recorded success before the cancel came
        child.join(30)
        with db.write() as conn:
            publishing.list_models(conn, [store.get_json(bucket=bucket, key="publishing/metadata.json")])
        assert queue.finish(claim, "succeeded")
    if queue.get("publishing")["status"] == "running":
        queue.cancel("publishing")
    pool.cancel("publishing")  # SIGKILLs the child mid-upload, then records the end
    names = {info.key for info in store.list(bucket=bucket)}
    counts = rebuild_catalog(store=store, db=db, bucket=bucket)
    with db.read() as conn:
        listed = [row.version for row in catalog.page_models(conn, limit=10)[0]]
    if slow:
        assert catalog_statuses(db) == {"publishing": "cancelled"}
        assert names == set() and listed == [] and counts["models_added"] == 0
    else:
        assert catalog_statuses(db) == {"publishing": "succeeded"}
        assert names == {"publishing/metadata.json", "publishing/model.safetensors"} and listed == ["publishing"]


def catalog_statuses(db) -> dict[str, str]:
    with db.read() as conn:
        return dict(conn.execute(select(Job.version, Job.status)).all())


def test_a_rebuilt_catalog_is_served(s3, store, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_MAX_CONCURRENT_JOBS="0")  # nothing claims the imported queued job
    store.ensure_buckets(settings.minio_model_bucket)
    old_bucket(store, settings.minio_model_bucket)
    with TestClient(create_app(settings)) as client:
        rebuild_catalog(store=store, db=client.app.state.db, bucket=settings.minio_model_bucket)
        listed = client.get("/models", params={"limit": 2}).json()
        assert [i["version"] for i in listed["items"]] == ["crashed-after-upload", "no-record"]
        assert [i["version"] for i in client.get("/models", params={"cursor": listed["next"]}).json()["items"]] == [
            "done"]
        blob = client.get("/models/done")
        assert blob.status_code == 200 and blob.headers["etag"].strip('"') == client.get(
            "/models/done/metadata").json()["sha256"]
        assert client.get("/train/waiting").json()["status"] == "queued"
        assert client.get("/models/waiting").status_code == 409
        assert client.get("/models/was-running").status_code == 404
