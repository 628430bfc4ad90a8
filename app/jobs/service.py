"""Training jobs: the service that submits, pages and cancels them and keeps the queue healthy."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from app.errors import InvalidInput, ServiceError
from app.jobs.queue import JobQueue
from app.storage import layout

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 2.0
CANCEL_WAIT_S = 5.0  # how long DELETE /train/{version} waits for another process to stop the job


class Executor(Protocol):
    """Where this process's claimed jobs run: a local process pool or a Ray cluster."""

    def start(self) -> None: ...
    def wake(self) -> None: ...
    def cancel(self, version: str) -> bool: ...
    def stop(self) -> None: ...


class JobService:
    """Submit, inspect, page and cancel jobs; runs this process's housekeeping (lapsed leases, deletions)."""

    def __init__(self, *, queue: JobQueue, executor: Executor | None, housekeeping: list[Callable[[], object]]):
        self.queue, self.executor, self.housekeeping = queue, executor, housekeeping
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

    def submit(self, record: dict) -> dict:
        """Queue a job; 409 when the version is taken."""
        self.queue.add(record)
        if self.executor is not None:
            self.executor.wake()
        return record

    def get(self, version: str) -> dict:
        return self.queue.get(layout.validate_version(version))

    def page(self, **filters) -> tuple[list[dict], str | None]:
        return self.queue.page(**filters)

    def cancel(self, version: str) -> dict:
        """Stop a queued or running job; it ends `cancelled` and no model is kept."""
        record = self.queue.cancel(layout.validate_version(version))
        if record["status"] != "running":
            return record
        if self.executor is not None and self.executor.cancel(version):  # held here: stopped now
            return self.queue.get(version)
        # Held elsewhere: its lease holder sees the flag at its next renewal (about twice a second).
        deadline = time.monotonic() + CANCEL_WAIT_S
        while record["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            record = self.queue.get(version)
        return record


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
