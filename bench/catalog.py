"""The job catalog at scale: a page of jobs and a service restart at 100,000 finished jobs against 1,000."""

from __future__ import annotations

import statistics
import time

from fastapi.testclient import TestClient
from sqlalchemy import insert

from app.db.engine import Database
from app.db.tables import Job, Label
from app.jobs.queue import JobQueue
from app.jobs.record import new_record
from app.main import create_app

ROWS = (1_000, 100_000)
PAGE_RUNS = 31
RESTARTS = 5


def measure(ctx) -> dict[str, float]:
    """list_jobs_page_growth (≤ 2.0), restart_growth (≈ 1: a restart reads no finished job)."""
    catalogs, pages, restarts = {}, {rows: [] for rows in ROWS}, {rows: [] for rows in ROWS}
    for rows in ROWS:
        settings = ctx.settings.model_copy(update={"data_dir": ctx.scratch / f"jobs-{rows}",
                                                   "max_concurrent_jobs": 1})
        db = Database(settings.catalog_url)
        db.migrate()
        _insert_finished_jobs(db, rows)
        queue = JobQueue(db, lease_seconds=30, max_attempts=3)
        middle = queue.page(limit=rows // 2)[1]
        asks = [{}, {"cursor": middle}, {"status": "succeeded"}, {"labels": [("team", "vision")]},
                {"dataset": "mnist", "cursor": middle}]
        _page_latency(queue, asks)  # warm the page cache
        catalogs[rows] = settings, db, queue, asks
    for _ in range(PAGE_RUNS):  # the sizes in turn: a slow spell of the machine falls on both
        for rows, (_, _, queue, asks) in catalogs.items():
            pages[rows].append(_page_latency(queue, asks))
    for _, db, _, _ in catalogs.values():
        db.dispose()
    for _ in range(RESTARTS):
        for rows, (settings, *_) in catalogs.items():
            restarts[rows].append(_restart(settings))
    pages, restarts = ({rows: statistics.median(runs) for rows, runs in times.items()} for times in (pages, restarts))
    small, large = ROWS
    return {"list_jobs_page_growth": pages[large] / pages[small], "list_jobs_page_ms_100k": pages[large] * 1000,
            "restart_growth": restarts[large] / restarts[small]}


def _insert_finished_jobs(db: Database, rows: int) -> None:
    records = []
    for i in range(rows):
        record = new_record(version=f"job-{i:07d}", dataset="mnist" if i % 2 else "cifar10",
                            request={"epochs": 1}, layers=[], labels={"team": "vision" if i % 3 else "audio"})
        record.update(status="succeeded" if i % 5 else "failed", created_at=f"2026-01-01T00:00:{i:09.3f}Z",
                      attempts=1, lost=0, cancel_requested=False, revision=3)
        records.append(record)
    with db.write() as conn:
        for start in range(0, rows, 10_000):
            chunk = records[start : start + 10_000]
            conn.execute(insert(Job), chunk)
            conn.execute(insert(Label), [{"version": r["version"], "key": "team", "value": r["labels"]["team"]}
                                         for r in chunk])


def _page_latency(queue: JobQueue, asks: list[dict]) -> float:
    start = time.perf_counter()
    for ask in asks:
        items, _ = queue.page(limit=50, **ask)
        assert len(items) == 50
    return (time.perf_counter() - start) / len(asks)


def _restart(settings) -> float:
    """From the app's start to its first answered request, then its stop: what a restart costs."""
    start = time.perf_counter()
    with TestClient(create_app(settings)) as client:
        assert client.get("/train", params={"limit": 1}).status_code == 200
    return time.perf_counter() - start
