"""Training jobs: durable job records in the model bucket and the service that submits and cancels them."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from app.errors import Conflict, IntegrityError, InvalidInput, NotFound, ObjectMissing, ServiceError
from app.storage import layout
from app.storage.s3 import Store

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = ("queued", "running", *sorted(TERMINAL))


class JobNotFound(NotFound):
    def __init__(self, version: str):
        super().__init__(f"no training job with version {version!r}; list jobs with GET /train",
                         version=version)


class JobRecords:
    """Reads and writes `<version>/job.json`; storage is the source of truth for every job."""

    def __init__(self, *, store: Store, bucket: str):
        self.store, self.bucket = store, bucket
        self._terminal: dict[str, dict] = {}  # finished records never change: read them once

    def get(self, version: str) -> dict:
        if version in self._terminal:
            return self._terminal[version]
        try:
            record = self.store.get_json(bucket=self.bucket, key=layout.key(version, layout.JOB_FILE))
            if not isinstance(record, dict) or record.get("status") not in STATUSES:
                raise ValueError("no valid status")
        except ObjectMissing:
            raise JobNotFound(version) from None
        except ValueError:
            raise IntegrityError(f"the job record of {version!r} is malformed; delete it with "
                                 f"DELETE /models/{version}", version=version) from None
        if record["status"] in TERMINAL:
            self._terminal[version] = record
        return record

    def put(self, record: dict) -> dict:
        self.store.put_json(bucket=self.bucket, key=layout.key(record["version"], layout.JOB_FILE),
                            value=record)
        self._terminal.pop(record["version"], None)
        return record

    def finish(self, version: str, status: str, error: str | None, *, keep: frozenset | set = frozenset()) -> None:
        """Write a terminal status unless the record's status is in `keep`; a job that did not succeed
        keeps no model (a failed upload may have left the metadata written just before it)."""
        try:
            record = self.get(version)
        except JobNotFound:
            return  # the record was deleted: nothing left to mark
        if record["status"] in keep:
            return
        self.put({**record, "status": status, "error": error, "finished_at": layout.utcnow()})
        if status != "succeeded":
            for name in (layout.MODEL_FILE, layout.METADATA_FILE):
                self.store.delete(bucket=self.bucket, key=layout.key(version, name))
        log.info("job %s %s%s", version, status, f": {error}" if error else "")

    def exists(self, version: str) -> bool:
        return self.store.exists(bucket=self.bucket, key=layout.key(version, layout.JOB_FILE))

    def forget(self, version: str) -> None:
        self._terminal.pop(version, None)

    def all(self) -> list[dict]:
        """Every job record, newest first."""
        records = []
        for obj in self.store.list(bucket=self.bucket):
            version = layout.version_of(obj.key)
            if obj.key != f"{version}/{layout.JOB_FILE}" or not layout.is_valid_version(version):
                continue  # not ours: never let a stray key break the listing
            try:
                records.append(self.get(version))
            except JobNotFound:  # deleted between listing and reading
                continue
            except IntegrityError as exc:
                log.warning("skipping a job record: %s", exc.detail)
        return sorted(records, key=lambda r: (r["created_at"], r["version"]), reverse=True)


def new_record(*, version: str, dataset: str, request: dict, layers: list[dict]) -> dict:
    """The record of a freshly queued job."""
    return {
        "version": version, "dataset": dataset, "status": "queued", "request": request,
        "layers": layers,
        "progress": {"epoch": 0, "epochs": request["epochs"], "step": 0, "steps": 0, "fraction": 0.0},
        "metrics": None, "history": [], "error": None,
        "created_at": layout.utcnow(), "started_at": None, "finished_at": None,
    }


class Executor(Protocol):
    """Where jobs run: a local process pool or a Ray cluster. Job records stay the source of truth."""

    def start(self, records: JobRecords) -> None: ...
    def submit(self, version: str) -> None: ...
    def cancel(self, version: str) -> bool: ...
    def recover(self, record: dict) -> None: ...
    def stop(self) -> None: ...


class RecordingExecutor:
    """What every executor shares: final statuses it writes, retried while storage refuses them."""

    records: JobRecords

    def __init__(self):
        self._unrecorded: dict[str, tuple] = {}

    def _finish(self, version: str, status: str, error: str | None, keep: frozenset | set = frozenset()) -> None:
        """Record a terminal status (see JobRecords.finish); what storage refuses is retried later."""
        self._unrecorded.pop(version, None)
        try:
            self.records.finish(version, status, error, keep=keep)
        except ServiceError as exc:
            log.warning("could not record %s for job %s yet (%s); retrying", status, version, exc.detail)
            self._unrecorded[version] = (status, error, keep)

    def _retry_unrecorded(self) -> None:
        for version, args in list(self._unrecorded.items()):
            self._finish(version, *args)


class JobService:
    """Submit, inspect and cancel jobs; the only writer of a record while its job is not running."""

    def __init__(self, *, records: JobRecords, executor: Executor):
        self.records, self.executor = records, executor
        self._lock, self._stopped = threading.Lock(), threading.Event()

    def start(self) -> None:
        """Hand the executor its records and pick up jobs left by a previous run of the service."""
        self.executor.start(self.records)
        threading.Thread(target=self._recover, name="scv-recover", daemon=True).start()

    def _recover(self, retry_s: float = 5.0) -> None:
        # Storage may be down at start-up: keep trying, so queued jobs run once it is back.
        while True:
            try:
                pending = sorted(self.records.all(), key=lambda r: r["created_at"])
                break
            except ServiceError as exc:
                log.warning("could not recover jobs yet (%s); retrying in %.0f s", exc.detail, retry_s)
                if self._stopped.wait(retry_s):
                    return
        for record in pending:
            if record["status"] in ("queued", "running"):
                self.executor.recover(record)

    def stop(self) -> None:
        """Stop recovering and stop the executor."""
        self._stopped.set()
        self.executor.stop()

    def submit(self, record: dict) -> dict:
        """Store a queued record and hand it to the executor; 409 when the version is taken."""
        version = record["version"]
        with self._lock:
            if self.records.exists(version) or self._model_exists(version):
                raise Conflict(f"version {version!r} is already used; choose another or omit it",
                               version=version, job=f"/train/{version}")
            self.records.put(record)
        self.executor.submit(version)
        return record

    def _model_exists(self, version: str) -> bool:
        return self.records.store.exists(bucket=self.records.bucket, key=layout.key(version, layout.MODEL_FILE))

    def get(self, version: str) -> dict:
        return self.records.get(layout.validate_version(version))

    def list(self, status: str | None = None) -> list[dict]:
        return [r for r in self.records.all() if status is None or r["status"] == status]

    def cancel(self, version: str) -> dict:
        """Stop a queued or running job; it ends `cancelled` and no model is kept."""
        record = self.get(version)
        if record["status"] in TERMINAL:
            raise Conflict(f"job {version!r} already ended ({record['status']}); nothing to cancel",
                           version=version, job_status=record["status"])
        if not self.executor.cancel(version):
            # Not held by the executor (e.g. recovery has not run yet): the record alone says it is open.
            self.records.finish(version, "cancelled", None, keep=TERMINAL)
        return self.records.get(version)


def prepare(request: dict, *, manifest: dict) -> tuple[str, list[dict]]:
    """The job's version (given or new) and its resolved layers; InvalidInput names a bad layer."""
    import models  # torch is heavy: only the paths that build networks import it

    version = layout.validate_version(request["version"]) if request.get("version") else (
        layout.new_version(manifest["name"]))
    try:
        layers = models.resolve_layers(request.get("layers"), input_shape=tuple(manifest["image_shape"]),
                                       num_classes=manifest["num_classes"])
    except models.LayerSpecError as exc:
        field = f"layers[{exc.index}]" if exc.index is not None else "layers"
        raise InvalidInput(str(exc), field=field, index=exc.index, reason=exc.reason) from None
    return version, layers
