"""The job queue on real SQLite and a real PostgreSQL: one claim per job, fenced attempts, leases, pages."""

import multiprocessing
import threading
import time

import pytest
from sqlalchemy import update

from app.db.engine import Database
from app.db.tables import Job
from app.errors import Conflict, InvalidInput
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.jobs.record import new_record

REQUEST = {"epochs": 1}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.db"
    return request.getfixturevalue("postgres_url")


def make_queue(url: str, *, lease_seconds: float = 30, max_attempts: int = 3) -> JobQueue:
    db = Database(url)
    db.migrate()
    return JobQueue(db, lease_seconds=lease_seconds, max_attempts=max_attempts)


def add(queue: JobQueue, version: str, *, dataset: str = "mnist", labels: dict | None = None) -> dict:
    return queue.add(new_record(version=version, dataset=dataset, request=REQUEST, layers=[], labels=labels or {}))


def _claim_all(url: str, results, start) -> None:
    queue = make_queue(url)
    start.wait()
    claimed = []
    while claim := queue.claim():
        claimed.append(claim.version)
    results.put(claimed)


def test_32_processes_claim_each_of_100_jobs_once(url):
    queue = make_queue(url)
    for i in range(100):
        add(queue, f"job-{i:03d}")
    ctx = multiprocessing.get_context("spawn")
    results, start = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_claim_all, args=(url, results, start)) for _ in range(32)]
    for worker in workers:
        worker.start()
    start.set()
    claimed = [version for _ in workers for version in results.get(timeout=120)]
    for worker in workers:
        worker.join(30)
    assert sorted(claimed) == [f"job-{i:03d}" for i in range(100)]  # every job, none twice
    page, _ = queue.page(limit=1000)
    assert {job["status"] for job in page} == {"running"} and {job["attempts"] for job in page} == {1}


def test_the_oldest_job_is_claimed_first_and_an_empty_queue_gives_none(url):
    queue = make_queue(url)
    for version in ("first", "second"):
        add(queue, version)
    assert queue.claim().version == "first"
    assert queue.claim().version == "second"
    assert queue.claim() is None


def test_a_taken_version_is_a_conflict(url):
    queue = make_queue(url)
    add(queue, "same")
    with pytest.raises(Conflict, match="already used"):
        add(queue, "same")


def _lapsed(url, version: str) -> tuple[JobQueue, Claim]:
    """A queue with 1 s leases and a started job whose lease has just lapsed."""
    queue = make_queue(url, lease_seconds=1)
    add(queue, version)
    claim = queue.claim()
    queue.start(claim, worker={"host": "a", "pid": 1}, request=REQUEST)
    time.sleep(1.3)
    return queue, claim


def test_a_lapsed_lease_is_taken_back_and_the_old_attempt_changes_nothing(url):
    queue, first = _lapsed(url, "slow")
    assert queue.reap() == ["slow"]
    assert queue.get("slow")["status"] == "queued"
    second = queue.claim()
    assert second == Claim("slow", 2)
    with pytest.raises(LeaseLost):
        queue.renew(first, progress={"epoch": 9, "epochs": 9, "step": 9, "steps": 9, "fraction": 1.0})
    assert not queue.finish(first, "succeeded", metrics={"test_accuracy": 1.0})
    assert queue.release(first, reason="stale") is None
    record = queue.get("slow")
    assert record["status"] == "running" and record["attempts"] == 2 and record["metrics"] is None
    assert queue.finish(second, "succeeded", metrics={"test_accuracy": 0.5})
    assert queue.get("slow")["metrics"] == {"test_accuracy": 0.5}


def test_lost_workers_are_retried_up_to_max_attempts_then_failed(url):
    queue = make_queue(url, max_attempts=2)
    add(queue, "doomed")
    assert queue.release(queue.claim(), reason="killed by SIGKILL") == "queued"
    assert queue.release(queue.claim(), reason="killed by SIGKILL") == "failed"
    record = queue.get("doomed")
    assert record["attempts"] == 2 and "killed by SIGKILL" in record["error"] and "2 lost attempts" in record["error"]


def test_a_graceful_hand_back_does_not_count_against_attempts(url):
    queue = make_queue(url, max_attempts=1)
    add(queue, "moved")
    for _ in range(3):
        assert queue.release(queue.claim()) == "queued"
    assert queue.get("moved")["attempts"] == 3


def test_cancel_ends_a_queued_job_and_flags_a_running_one(url):
    queue = make_queue(url)
    add(queue, "waiting")
    add(queue, "busy")
    claim = queue.claim()  # the oldest: "waiting"
    assert queue.cancel("busy")["status"] == "cancelled"
    assert queue.cancel("waiting")["status"] == "running"
    assert queue.renew(claim) is True  # the lease holder learns of it at its next renewal
    assert queue.release(claim, reason="stopped") == "cancelled"
    with pytest.raises(Conflict, match="already ended"):
        queue.cancel("waiting")


def test_pages_walk_every_job_once_while_jobs_arrive(url):
    queue = make_queue(url)
    for i in range(45):
        add(queue, f"v{i:03d}", dataset="mnist" if i % 3 else "cifar10", labels={"team": "a" if i % 2 else "b"})
    seen, cursor = [], None
    while True:
        items, cursor = queue.page(limit=10, cursor=cursor)
        seen += [item["version"] for item in items]
        add(queue, f"late-{len(seen)}")  # newer than every page already served: not in this walk
        if cursor is None:
            break
    assert seen == [f"v{i:03d}" for i in reversed(range(45))]
    cifar, _ = queue.page(dataset="cifar10", labels=[("team", "b")], limit=100)
    assert [r["version"] for r in cifar] == [f"v{i:03d}" for i in reversed(range(0, 45, 6))]
    assert all(r["labels"] == {"team": "b"} for r in cifar)
    queued, _ = queue.page(status="running", limit=5)
    assert queued == []
    with pytest.raises(InvalidInput, match="cursor"):
        queue.page(cursor=cursor_of(queue)[:-3] + "xyz")


def cursor_of(queue: JobQueue) -> str:
    return queue.page(limit=1)[1]


def test_a_cancel_committed_while_release_decides_is_not_lost(postgres_url):
    """Two connections by hand: a cancel holds the row (uncommitted) while the pool hands the job back."""
    queue = make_queue(postgres_url)
    add(queue, "racing")
    claim = queue.claim()
    canceller = queue.db.engine.connect()
    transaction = canceller.begin()
    canceller.execute(update(Job).where(Job.version == "racing", Job.status == "running")
                      .values(cancel_requested=True, revision=Job.revision + 1))
    released = []
    handing_back = threading.Thread(target=lambda: released.append(queue.release(claim)))
    handing_back.start()
    time.sleep(0.5)  # release() is now waiting on the row (before: it had read cancel_requested=False already)
    assert released == []
    transaction.commit()
    canceller.close()
    handing_back.join(10)
    assert released == ["cancelled"] and queue.get("racing")["status"] == "cancelled"


def test_the_reaper_takes_back_only_a_lease_still_lapsed_when_it_writes(url):
    queue, claim = _lapsed(url, "slow")
    assert queue.lapsed() == [claim]  # the reaper's read: lapsed
    assert queue.renew(claim) is False  # ... and the worker renews before the reaper writes
    assert queue.release(claim, reason="lapsed", if_lapsed=True) is None
    record = queue.get("slow")
    assert record["status"] == "running" and record["attempts"] == 1 and record["error"] is None
    assert queue.reap() == []


def test_a_new_attempt_shows_the_progress_it_resumes_from_once_claimed(url):
    queue = make_queue(url)
    add(queue, "resumed")
    first = queue.claim()
    queue.renew(first, progress={"epoch": 2, "epochs": 2, "step": 7, "steps": 10, "fraction": 0.85})
    queue.record_checkpoint(first, {"key": "resumed/checkpoints/a1-e2-s3.safetensors", "sha256": "0" * 64,
                                    "size": 1, "epoch": 2, "step": 3, "attempt": 1})
    queue.release(first, reason="killed by SIGKILL")
    queue.claim()
    assert queue.get("resumed")["progress"] == {"epoch": 2, "epochs": 2, "step": 3, "steps": 10, "fraction": 0.65}
    add(queue, "restarted")
    first = queue.claim()
    queue.renew(first, progress={"epoch": 1, "epochs": 1, "step": 4, "steps": 10, "fraction": 0.4})
    queue.release(first, reason="killed by SIGKILL")  # never checkpointed: the next attempt starts over
    queue.claim()
    assert queue.get("restarted")["progress"] == {"epoch": 0, "epochs": 1, "step": 0, "steps": 10, "fraction": 0.0}
