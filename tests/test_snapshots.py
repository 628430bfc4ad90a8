"""Snapshots: the weights a training job keeps at initialisation and after every `snapshot_every`-th epoch and the
last, as model files beside the model; never left by a job that ended without one."""

from app.jobs.queue import JobQueue
from app.registry import publishing
from tests.support.catalog import add_job, open_catalog


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
