"""Training jobs: the service that submits, follows, pages and cancels them and keeps the queue healthy."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import Conflict, InvalidInput, ServiceError
from app.jobs.queue import TERMINAL, JobQueue
from app.jobs.record import new_record
from app.jobs.request import TrainRequest
from app.storage import layout

if TYPE_CHECKING:
    from app.datasets.service import DatasetService

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 2.0
CANCEL_WAIT_S = 5.0  # how long DELETE /train/{version} waits for another process to stop the job
EVENT_POLL_S = 0.5  # how often a followed job's record is read for changes


class Executor(Protocol):
    """Where this process's claimed jobs run: a local process pool or a Ray cluster."""

    def start(self) -> None: ...
    def wake(self) -> None: ...
    def cancel(self, version: str) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class JobEvent:
    """One event of a followed job: `job` with the record (`id` its revision), or `error` with status and detail."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class JobService:
    """Submit, follow, inspect, page and cancel jobs; runs this process's housekeeping (lapsed leases, deletions)."""

    def __init__(self, *, queue: JobQueue, executor: Executor | None, datasets: DatasetService, precision: str,
                 max_bytes: int, housekeeping: list[Callable[[], object]]):
        self.queue, self.executor, self.housekeeping = queue, executor, housekeeping
        self.max_bytes = max_bytes  # SCV_ANALYSIS_MAX_BYTES, as the workers have it: a training batch must fit
        self.datasets, self.precision = datasets, precision  # precision: SCV_PRECISION, for requests naming none
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._housekeep, name="scv-housekeeping", daemon=True)

    def start(self) -> None:
        """Start the executor (if this process trains) and the housekeeping thread; no other job is touched."""
        if self.executor is not None:
            self.executor.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop housekeeping and the executor; its running jobs go back to the queue."""
        self._stopped.set()
        if self.executor is not None:
            self.executor.stop()

    def _housekeep(self) -> None:
        interval = min(HOUSEKEEPING_S, self.queue.lease_seconds / 3)
        while not self._stopped.wait(interval):
            for task in self.housekeeping:
                try:
                    task()
                except ServiceError as exc:
                    log.warning("housekeeping: %s", exc.detail)

    def submit(self, body: TrainRequest) -> dict:
        """Queue a job and return its record; 404 for an unknown or unseeded dataset, 422 naming a bad layer or a
        batch_size whose activations do not fit a worker's memory budget, 409 when the version is taken."""
        manifest = self.datasets.manifest(body.dataset)
        request = body.model_dump(exclude={"labels"})
        request["precision"] = body.precision or self.precision
        if body.train_subset is not None and body.train_subset > manifest["train_size"]:
            request["train_subset"] = None  # more than there is: train on everything
        version, layers = prepare(request, manifest=manifest, max_bytes=self.max_bytes)
        record = new_record(version=version, dataset=body.dataset, request={**request, "version": version},
                            layers=layers, labels=body.labels)
        self.queue.add(record)
        if self.executor is not None:
            self.executor.wake()
        return record

    def analyse(self, job_id: str, *, dataset: str, request: dict) -> dict:
        """Queue the analysis job `job_id` (`analysis~<key>`) unless it exists; a failed one is queued afresh (its
        failure answered once). Its record either way."""
        record = new_record(version=job_id, dataset=dataset, request={**request, "epochs": 1}, layers=[], labels={})
        with suppress(Conflict):  # queued already, by this request or another replica's
            self.queue.add(record)
        job = self.queue.get(job_id)
        if job["status"] == "failed":
            self.queue.forget(job_id)
        elif job["status"] == "queued" and self.executor is not None:
            self.executor.wake()
        return job

    def get(self, version: str) -> dict:
        return self.queue.get(layout.validate_version(version))

    def page(self, **filters) -> tuple[list[dict], str | None]:
        return self.queue.page(**filters)

    async def events(self, version: str, *, last_event_id: str | None = None) -> AsyncIterator[JobEvent]:
        """The job's record on every change, ending after a terminal status; given the last event id seen (a
        reconnecting client's `Last-Event-ID`), only newer records."""
        seen = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        while True:
            try:
                record, revision = await asyncio.to_thread(self.queue.get_with_revision, version)
            except ServiceError as exc:  # the stream has started: report in-band, the client may retry
                yield JobEvent("error", {"status": exc.status, "detail": exc.detail})
                return
            if revision > seen:
                seen = revision
                yield JobEvent("job", record, id=str(revision))
            if record["status"] in TERMINAL:
                return
            await asyncio.sleep(EVENT_POLL_S)

    def cancel(self, version: str) -> dict:
        """Stop a queued or running job; it ends `cancelled` and no model is kept."""
        if self.queue.cancel(layout.validate_version(version))["status"] == "running" and self.executor is not None:
            self.executor.cancel(version)  # held by the local pool: ended now; on Ray: Ray is asked to stop it
        # Held elsewhere: its lease holder sees the flag at its next renewal (about twice a second).
        deadline = time.monotonic() + CANCEL_WAIT_S
        while (record := self.queue.get(version))["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        return record


def prepare(request: dict, *, manifest: dict, max_bytes: int) -> tuple[str, list[dict]]:
    """The job's version (given or new) and its resolved layers; InvalidInput names a bad layer, or `batch_size`
    when the batch's training activations (models.TRAINING_FACTOR × forward, float32) exceed `max_bytes`."""
    import models  # torch is heavy: only the paths that build networks import it

    version = layout.validate_version(request["version"]) if request.get("version") else (
        layout.new_version(manifest["name"]))
    try:
        layers = models.resolve_layers(request.get("layers"), input_shape=tuple(manifest["image_shape"]),
                                       num_classes=manifest["num_classes"])
    except models.LayerSpecError as exc:
        field = f"layers[{exc.index}]" if exc.index is not None else "layers"
        raise InvalidInput(str(exc), field=field, index=exc.index, reason=exc.reason) from None
    batch_size = request["batch_size"]
    try:
        fits = models.training_batch(layers, input_shape=manifest["image_shape"], max_bytes=max_bytes)
    except models.MemoryBudgetError as exc:
        raise InvalidInput(f"batch_size {batch_size}: not even one image fits a worker's memory budget in "
                           f"training: {exc}", field="batch_size", needed_bytes=exc.needed,
                           max_bytes=max_bytes) from None
    if batch_size > fits:
        raise InvalidInput(f"batch_size {batch_size} does not fit a worker's memory budget: training this network "
                           f"keeps about {models.memory.TRAINING_FACTOR} × its forward activations per image, "
                           f"{max_bytes:,} bytes (SCV_ANALYSIS_MAX_BYTES) hold at most {fits} images — use "
                           f"batch_size {fits} or less", field="batch_size", max_batch_size=fits,
                           max_bytes=max_bytes)
    return version, layers
