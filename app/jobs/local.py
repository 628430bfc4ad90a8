"""The local worker pool: claims queued jobs from the catalog and trains each in its own child process."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing import forkserver

from app.errors import ServiceError
from app.jobs.attempt import EXIT_UNAVAILABLE
from app.jobs.queue import Claim, JobQueue
from app.jobs.worker import run_in_child

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often an idle pool looks for queued jobs (a submit in this process wakes it at once)
MAX_BACKOFF_S = 30.0


def exit_reason(exitcode: int | None) -> str:
    """Words for how a worker process ended without recording a final status."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"the worker process was killed by {name} (out of memory, or stopped from outside)"
    return f"the worker process exited with code {exitcode} before finishing the job"


class LocalPool:
    """`slots` jobs at once, each in a forked child of a forkserver that has torch preloaded (fast start-up)."""

    def __init__(self, *, queue: JobQueue, env: dict[str, str], slots: int):
        self.queue, self.env, self.slots = queue, env, slots  # env: Settings.to_env(), every child's settings
        self._ctx = multiprocessing.get_context("forkserver")
        self._running: dict[str, tuple[Claim, multiprocessing.Process]] = {}
        self._lock, self._wake, self._stopped = threading.Lock(), threading.Event(), False
        self._backoff, self._paused_until = 0.0, 0.0
        self._thread = threading.Thread(target=self._supervise, name="scv-pool", daemon=True)

    def start(self) -> None:
        # torch.optim imports torch._dynamo on a process's first optimizer (2-3 s): pay it once, here.
        self._ctx.set_forkserver_preload(["app.jobs.worker", "torch._dynamo"])
        # Warm the forkserver in the background so the first job does not pay torch's import.
        threading.Thread(target=forkserver.ensure_running, daemon=True).start()
        self._thread.start()

    def wake(self) -> None:
        """Look for queued jobs now (a job was just submitted)."""
        self._wake.set()

    def cancel(self, version: str) -> None:
        """End the job's child if it runs here and hand the job back: `cancelled` once a cancel was asked for."""
        with self._lock:
            held = self._running.pop(version, None)
        if held is None:
            return
        claim, process = held
        process.kill()
        process.join()
        self._release(claim, None)  # handed back, not lost (fenced: an end the child recorded stays)

    def stop(self) -> None:
        """Stop claiming; running jobs are ended and go back to the queue at once, for any worker to resume."""
        with self._lock:
            self._stopped = True
            running = list(self._running)
        self._wake.set()
        for version in running:
            self.cancel(version)  # no cancel was asked for: the job goes back to the queue
        if self._thread.is_alive():
            self._thread.join(5)

    def _supervise(self) -> None:
        # The lock guards `_running` only: the catalog calls (claim, release) happen outside it, so cancel()
        # and stop() never wait behind a database that is slow to answer.
        while True:
            with self._lock:
                if self._stopped:
                    return
                ended = [held for held in self._running.values() if held[1].exitcode is not None]
                for claim, _ in ended:
                    del self._running[claim.version]
                free = self.slots - len(self._running) if time.monotonic() >= self._paused_until else 0
            for claim, process in ended:
                self._ended(claim, process)
            try:
                while free > 0 and (claim := self.queue.claim()):
                    free -= self._launch(claim)
            except ServiceError as exc:
                log.warning("could not claim jobs: %s", exc.detail)
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _launch(self, claim: Claim) -> int:
        """Start the claimed job's child; 1 when it runs, 0 when the job was handed back."""
        process = self._ctx.Process(target=run_in_child, name=f"scv-train-{claim.version}",
                                    args=(claim, self.env, self.slots), daemon=False)
        failure = None  # stop() hands every job back: one claimed while it did goes back too
        with self._lock:
            if not self._stopped:
                try:
                    process.start()
                except OSError as exc:
                    failure = f"could not start a worker process: {exc}"
                else:
                    self._running[claim.version] = (claim, process)
                    log.info("job %s attempt %d started in worker pid %s", claim.version, claim.attempt, process.pid)
                    return 1
        self._release(claim, failure)
        return 0

    def _ended(self, claim: Claim, process: multiprocessing.Process) -> None:
        process.join()
        # A child that recorded its end changed the status already: this fenced release changes nothing.
        self._release(claim, exit_reason(process.exitcode))
        if process.exitcode == EXIT_UNAVAILABLE:  # storage or the catalog is away: back off before claiming
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2 or 1.0)
            self._paused_until = time.monotonic() + self._backoff
            log.warning("storage or the catalog was unavailable; claiming again in %.0f s", self._backoff)
        elif process.exitcode == 0:
            self._backoff = 0.0

    def _release(self, claim: Claim, reason: str | None) -> None:
        try:
            self.queue.release(claim, reason=reason)
        except ServiceError as exc:  # the lease lapses and any process's reaper takes the job back
            log.warning("job %s: could not hand the job back yet (%s)", claim.version, exc.detail)
