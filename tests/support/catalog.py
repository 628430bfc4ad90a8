"""A migrated catalog and rows as the service writes them, for tests that need models and jobs without training."""

from datetime import UTC, datetime

from sqlalchemy import insert

from app.db.engine import Database
from app.db.tables import Job, Label
from app.jobs.record import job_row, new_record
from app.registry import catalog, publishing

START = datetime(2026, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_catalog(request, tmp_path, kind: str) -> Database:
    """A migrated, empty catalog: SQLite in tmp_path, or a fresh PostgreSQL database."""
    url = f"sqlite:///{tmp_path}/c.db" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    return db


def job_values(version: str, *, status: str = "succeeded", dataset: str = "mnist", created_at: str | None = None,
               labels: dict | None = None) -> dict:
    """A `jobs` row with the given status."""
    record = new_record(version=version, dataset=dataset, request={"epochs": 1}, layers=[], labels=labels or {})
    return job_row({**record, "status": status, "attempts": 1, "created_at": created_at or catalog.iso(START)})


def add_models(db: Database, rows: list[dict]) -> None:
    """Insert model rows with their succeeded jobs and labels, as a finished job leaves them."""
    with db.write() as conn:
        publishing.list_models(conn, [r["meta"] for r in rows])
        conn.execute(insert(Job), [job_values(r["version"], dataset=r["dataset"], created_at=r["created_at"],
                                              labels=r["labels"]) for r in rows])
        pairs = [{"version": r["version"], "key": k, "value": v} for r in rows for k, v in r["labels"].items()]
        if pairs:
            conn.execute(insert(Label), pairs)


def add_job(db: Database, version: str, status: str) -> None:
    """A job row without a model (queued, running, or ended without one)."""
    with db.write() as conn:
        conn.execute(insert(Job).values(**job_values(version, status=status)))
