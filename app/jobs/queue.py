"""The job queue (training jobs, and analysis jobs whose ID is `analysis~<key>`): job records are catalog rows,
claimed under leases on the database clock, fenced by attempt. Every write of a worker says what it expects
(`WHERE version = :v AND attempts = :attempt AND status = 'running'`): a worker whose lease lapsed, and whose job
another worker took over, changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError as RowExists

from app.db.cursors import decode_cursor, encode_cursor
from app.db.engine import Database, db_now, insert_absent
from app.db.tables import CheckpointRow, Deletion, Job, Label
from app.errors import Conflict, NotFound
from app.jobs.record import JobRecord, job_row, record_of
from app.storage import layout

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = ("queued", "running", *sorted(TERMINAL))
START_GRACE_S = 60.0  # a claimed job's first lease: its worker process may take a while to start (cold, loaded)


class JobNotFound(NotFound):
    def __init__(self, version: str):
        super().__init__(f"no training job with version {version!r}; list jobs with GET /train", version=version)


class LeaseLost(Exception):
    """This attempt no longer holds its job (the lease lapsed and the job was taken back); stop, change nothing."""


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: every write it makes is fenced by `attempt`."""

    version: str
    attempt: int


def _held(claim: Claim) -> list:
    """What every write of an attempt expects: its job still running under that attempt."""
    return [Job.version == claim.version, Job.attempts == claim.attempt, Job.status == "running"]


def import_job(conn: Connection, record: JobRecord | dict) -> bool:
    """Insert a job that no worker holds, and its labels, unless its version has a job row already (`scv catalog
    rebuild`: the queue's own records win); True when inserted."""
    row = job_row(record)
    if not insert_absent(conn, Job, row):
        return False
    for key, value in row["labels"].items():
        insert_absent(conn, Label, {"version": row["version"], "key": key, "value": value})
    return True


def resume_progress(progress: dict, checkpoint: dict | None) -> dict:
    """A new attempt's progress: where its latest checkpoint stands (`epoch`, `step`), else the start."""
    epochs, steps = progress["epochs"], progress.get("steps") or 0
    if checkpoint is None:
        return {**progress, "epoch": 0, "step": 0, "fraction": 0.0}
    epoch, step = checkpoint["epoch"], checkpoint["step"]
    done = ((epoch - 1) * steps + step) / (epochs * steps) if steps and epochs else 0.0
    return {**progress, "epoch": epoch, "step": step, "fraction": min(1.0, max(0.0, done))}


class JobQueue:
    """Submit, read, page, claim, renew, finish and take back jobs; the catalog is the source of truth."""

    def __init__(self, db: Database, *, lease_seconds: float, max_attempts: int,
                 on_end: Callable[[str, str], object] | None = None):
        self.db, self.lease_seconds, self.max_attempts = db, lease_seconds, max_attempts
        # on_end(version, status): an attempt was given up (release) or a job that had attempts was cancelled while
        # queued; removes the version's model objects, and its snapshots once the job ended (`status` not queued)
        self.on_end = on_end

    # -- the API's side ------------------------------------------------------------------------------

    def add(self, record: dict) -> dict:
        """Insert a queued job and its labels; 409 when the version is taken."""
        try:
            with self.db.write() as conn:
                if conn.execute(select(Deletion.version).where(Deletion.version == record["version"])).first():
                    raise Conflict(f"version {record['version']!r} is still being deleted; retry in a few seconds "
                                   "or choose another", version=record["version"])
                conn.execute(insert(Job).values(**job_row(record)))
                if record["labels"]:
                    conn.execute(insert(Label), [{"version": record["version"], "key": k, "value": v}
                                                 for k, v in record["labels"].items()])
        except RowExists:
            raise Conflict(f"version {record['version']!r} is already used; choose another or omit it",
                           version=record["version"], job=f"/train/{record['version']}") from None
        return record

    def forget(self, job_id: str) -> None:
        """Remove an ended analysis job's row: its result is stored, or its failure was answered once."""
        with self.db.write() as conn:
            conn.execute(delete(Job).where(Job.version == job_id, Job.status.in_(("succeeded", "failed"))))

    def get(self, version: str) -> dict:
        """One job record; 404 when unknown."""
        return self.get_with_revision(version)[0]

    def get_with_revision(self, version: str) -> tuple[dict, int]:
        """One job record and its revision (a number that grows with every change)."""
        with self.db.read() as conn:
            row = conn.execute(select(Job).where(Job.version == layout.validate_job_id(version))).first()
        if row is None:
            raise JobNotFound(version)
        return record_of(row), row.revision

    def page(self, *, status: str | None = None, dataset: str | None = None, labels: Sequence[tuple[str, str]] = (),
             limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Newest first; the cursor continues after the last item, whatever was added or removed since."""
        query = (select(Job).where(Job.version.not_like(f"{layout.ANALYSIS_JOB}%"))  # training jobs only
                 .order_by(Job.created_at.desc(), Job.version.desc()).limit(limit + 1))
        if status:
            query = query.where(Job.status == status)
        if dataset:
            query = query.where(Job.dataset == dataset)
        for key, value in labels:  # probed per job in page order: no sort of every labelled job
            query = query.where(select(Label.version).where(
                Label.version == Job.version, Label.key == key, Label.value == value).exists())
        if cursor:
            created_at, version = decode_cursor(cursor, sort="jobs", kinds=((str,), (str,)))
            # `<=` first lets SQLite seek the index to the cursor; the rest breaks ties by version
            query = query.where(Job.created_at <= created_at, or_(
                Job.created_at < created_at, and_(Job.created_at == created_at, Job.version < version)))
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [record_of(row) for row in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor("jobs", items[-1]["created_at"], items[-1]["version"]) if more else None

    def cancel(self, version: str) -> dict:
        """A queued job ends `cancelled` now; a running one is flagged, and its lease holder stops within a second."""
        record = self.get(version)
        if record["status"] in TERMINAL:
            raise Conflict(f"job {version!r} already ended ({record['status']}); nothing to cancel",
                           version=version, job_status=record["status"])
        with self.db.write() as conn:
            tried = conn.execute(update(Job).where(Job.version == version, Job.status == "queued")
                                 .values(status="cancelled", finished_at=layout.utcnow(), revision=Job.revision + 1)
                                 .returning(Job.attempts)).scalar()
            conn.execute(update(Job).where(Job.version == version, Job.status == "running")
                         .values(cancel_requested=True, revision=Job.revision + 1))
        if tried and self.on_end is not None:  # queued again after a lost attempt: its snapshots are stored
            self._ended(version, "cancelled")
        return self.get(version)

    # -- the workers' side ---------------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Take the oldest queued job under a new attempt and lease, atomically; None when the queue is empty.
        The attempt's worker process names itself in `start`. Its record shows, from now on, the progress it
        resumes from: its latest checkpoint's, else the start."""
        oldest = (select(Job.version).where(Job.status == "queued").order_by(Job.created_at, Job.version)
                  .limit(1).with_for_update(skip_locked=True).scalar_subquery())
        with self.db.write() as conn:
            row = conn.execute(
                update(Job).where(Job.version == oldest, Job.status == "queued")
                .values(status="running", attempts=Job.attempts + 1,
                        lease_until=db_now() + max(self.lease_seconds, START_GRACE_S),
                        worker=None, resumed_from=None, error=None, revision=Job.revision + 1)
                .returning(Job.version, Job.attempts, Job.progress)).first()
            if row is None:
                return None
            latest = conn.execute(select(CheckpointRow.latest).where(CheckpointRow.version == row.version)).scalar()
            conn.execute(update(Job).where(Job.version == row.version, Job.attempts == row.attempts)
                         .values(progress=resume_progress(row.progress, latest)))
        return Claim(row.version, row.attempts)

    def start(self, claim: Claim, *, worker: dict, request: dict, resumed_from: dict | None = None) -> dict:
        """The attempt's worker process begins: record who runs it and the request as it resolved it (precision);
        LeaseLost when it no longer holds the job."""
        with self.db.write() as conn:
            row = conn.execute(update(Job).where(*_held(claim)).values(
                worker=worker, request=request, resumed_from=resumed_from, started_at=layout.utcnow(),
                lease_until=db_now() + self.lease_seconds, revision=Job.revision + 1).returning(Job)).first()
        if row is None:
            raise LeaseLost(claim.version)
        return record_of(row)

    def renew(self, claim: Claim, **state) -> bool:
        """Extend the lease, writing `state` (progress, metrics, history); True when a cancel was asked for.
        LeaseLost when this attempt no longer holds the job."""
        values = {"lease_until": db_now() + self.lease_seconds}
        if state:
            values.update(state, revision=Job.revision + 1)
        with self.db.write() as conn:
            row = conn.execute(update(Job).where(*_held(claim)).values(**values)
                               .returning(Job.cancel_requested)).first()
        if row is None:
            raise LeaseLost(claim.version)
        return bool(row.cancel_requested)

    def finish(self, claim: Claim, status: str, *, error: str | None = None,
               publish: Callable[[Connection], object] | None = None, **state) -> bool:
        """End the attempt's job with a terminal status (and, on success, list its model in the same transaction:
        `publish(conn)`); False when the attempt no longer held it, in which case nothing changed."""
        with self.db.write() as conn:
            done = conn.execute(update(Job).where(*_held(claim)).values(
                status=status, error=error, finished_at=layout.utcnow(), lease_until=None, cancel_requested=False,
                revision=Job.revision + 1, **state)).rowcount == 1
            if done and publish is not None:
                publish(conn)
        if done:
            log.info("job %s %s%s", claim.version, status, f": {error}" if error else "")
        return done

    def release(self, claim: Claim, *, reason: str | None = None, if_lapsed: bool = False) -> str | None:
        """Give the job back: to the queue after a graceful stop (`reason` None), or, for a lost worker
        (`reason` says how), to the queue again while attempts remain, else `failed`. With `if_lapsed` (the
        reaper), only while its lease is still lapsed. Returns the new status (None: nothing changed).

        The decision is made under the row's lock (FOR UPDATE on PostgreSQL; SQLite's write transaction holds
        the database), and its write states what it read, so a cancel or renewal in between is never lost."""
        held = _held(claim)
        if if_lapsed:
            held.append(Job.lease_until < db_now())
        with self.db.write() as conn:
            row = conn.execute(select(Job.lost, Job.cancel_requested).where(*held).with_for_update()).first()
            if row is None:
                return None
            lost = row.lost + (reason is not None)
            if row.cancel_requested:
                status, error = "cancelled", None
            elif lost >= self.max_attempts:
                status, error = "failed", f"{reason}; gave up after {lost} lost attempts (SCV_MAX_ATTEMPTS)"
            else:
                status, error = "queued", None
            written = conn.execute(update(Job).where(
                *held, Job.lost == row.lost, Job.cancel_requested == row.cancel_requested).values(
                status=status, error=error, lost=lost, lease_until=None, cancel_requested=False,
                finished_at=layout.utcnow() if status in TERMINAL else None, revision=Job.revision + 1)).rowcount
        if written != 1:  # the row changed since it was read (no row lock): decide again on what it says now
            return self.release(claim, reason=reason, if_lapsed=if_lapsed)
        log.info("job %s (attempt %d) %s%s", claim.version, claim.attempt,
                 "handed back" if reason is None else f"lost: {reason}", f"; now {status}")
        if self.on_end is not None:  # no attempt succeeded: whatever model objects one stored are not a model
            self._ended(claim.version, status)
        return status

    def _ended(self, version: str, status: str) -> None:
        """An attempt was given up (the job queued again, failed or cancelled): remove the model objects it may
        have stored (`on_end`), after its worker stopped; a failure is logged (rebuild never lists them)."""
        try:
            self.on_end(version, status)
        except Exception as exc:  # noqa: BLE001 - the job has ended; leftovers are logged, not raised
            log.warning("job %s: could not remove its objects: %s", version, exc)

    def lapsed(self) -> list[Claim]:
        """The attempts whose lease lapsed (their worker died, hung or lost its machine)."""
        with self.db.read() as conn:
            return [Claim(row.version, row.attempts) for row in conn.execute(select(Job.version, Job.attempts).where(
                Job.status == "running", Job.lease_until < db_now()))]

    def reap(self) -> list[str]:
        """Take back every job whose lease lapsed and is still lapsed when it is taken back."""
        reason = f"the worker stopped renewing its lease for {self.lease_seconds:g} s"
        return [claim.version for claim in self.lapsed()
                if self.release(claim, reason=reason, if_lapsed=True) is not None]

    # -- checkpoints -----------------------------------------------------------------------------------

    def record_checkpoint(self, claim: Claim, entry: dict) -> dict | None:
        """Point the job at a newly stored checkpoint, keeping the one before; returns the entry no longer kept
        (its object can go). LeaseLost when this attempt no longer holds the job."""
        with self.db.write() as conn:
            if conn.execute(select(Job.version).where(*_held(claim))).first() is None:
                raise LeaseLost(claim.version)
            row = conn.execute(select(CheckpointRow).where(CheckpointRow.version == claim.version)).first()
            if row is None:
                conn.execute(insert(CheckpointRow).values(version=claim.version, latest=entry, previous=None))
                return None
            conn.execute(update(CheckpointRow).where(CheckpointRow.version == claim.version)
                         .values(latest=entry, previous=row.latest))
            return row.previous

    def checkpoints(self, version: str) -> list[dict]:
        """The job's stored checkpoints, newest first."""
        with self.db.read() as conn:
            row = conn.execute(select(CheckpointRow).where(CheckpointRow.version == version)).first()
        return [entry for entry in (row.latest, row.previous) if entry] if row else []

    def ended_checkpoints(self, limit: int = 50) -> list[str]:
        """Versions whose checkpoints outlived their job (it ended, or its row is gone)."""
        with self.db.read() as conn:
            return list(conn.execute(
                select(CheckpointRow.version).outerjoin(Job, Job.version == CheckpointRow.version)
                .where(or_(Job.version.is_(None), Job.status.in_(TERMINAL))).limit(limit)).scalars())

    def forget_checkpoints(self, version: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(CheckpointRow).where(CheckpointRow.version == version))
