"""A claimed job's lease, kept alive from a background thread that writes the latest progress with it."""

from __future__ import annotations

import logging
import threading

from app.errors import ServiceError
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.jobs.record import Progress

log = logging.getLogger("scv.worker")
RENEW_S = 0.5  # progress reaches the catalog this often; a cancel is seen as fast
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
VALIDATION = ("val_loss", "val_accuracy")  # in the metrics of a job with a validation_split only


class Lease:
    """Keeps a claimed job's lease alive from a background thread, writing the latest progress with each renewal.

    The training thread only hands over state (`update`) and asks `check()`: no database round trip per step.
    """

    def __init__(self, *, queue: JobQueue, claim: Claim, record: dict):
        self.queue, self.claim = queue, claim
        self.interval = min(RENEW_S, queue.lease_seconds / 3)
        self.state = {k: record[k] for k in ("progress", "metrics", "history")}
        self._dirty, self._cancelled, self._lost = False, threading.Event(), threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scv-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def restart(self, *, history: list[dict], resumed_from: dict | None) -> None:
        """The attempt starts from a checkpoint (its history so far) or from scratch; the record says which."""
        self.state = {**self.state, "history": list(history)}
        self.queue.renew(self.claim, **self.state, resumed_from=resumed_from)

    def update(self, progress: dict) -> None:
        """Record a progress report of the training loop (and an epoch's result when it carries one)."""
        done = progress.pop("epoch_done", None)
        metrics = dict(self.state["metrics"] or {})
        metrics.update(train_loss=progress["train_loss"], train_accuracy=progress["train_accuracy"])
        if done:
            metrics.update({k: done[k] for k in ("test_loss", "test_accuracy", *VALIDATION) if k in done})
        keys = (*METRICS, *(k for k in VALIDATION if k in metrics))
        self.state = {"progress": Progress.model_validate(progress).model_dump(),
                      "metrics": {k: metrics.get(k) for k in keys},
                      "history": [*self.state["history"], done] if done else self.state["history"]}
        self._dirty = True
        self.check()

    def check(self) -> None:
        """Raise LeaseLost or JobCancelled as soon as the renewing thread has learnt of either."""
        if self._lost.is_set():
            raise LeaseLost(self.claim.version)
        if self._cancelled.is_set():
            raise JobCancelled(self.claim.version)

    def renew_now(self) -> None:
        """A synchronous renewal (before irreversible steps such as the model upload)."""
        self._renew()
        self.check()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._renew()
            except LeaseLost:
                return
            except ServiceError as exc:  # the database is briefly away: the lease outlives a few misses
                log.warning("job %s: could not renew the lease: %s", self.claim.version, exc.detail)

    def _renew(self) -> None:
        state, self._dirty = self.state if self._dirty else {}, False
        try:
            if self.queue.renew(self.claim, **state):
                self._cancelled.set()
        except LeaseLost:
            self._lost.set()
            raise


class JobCancelled(Exception):
    """A cancel was asked for while this worker held the job."""
