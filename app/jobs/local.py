"""The local executor: each training job in its own child process, a bounded number at once."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections import deque
from multiprocessing import forkserver

from app.jobs.service import TERMINAL, JobRecords, RecordingExecutor

log = logging.getLogger(__name__)
POLL_S = 0.2


def exit_reason(exitcode: int | None) -> str:
    """Words for how a worker process ended without writing a final status."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"the worker process was killed by {name} (out of memory, or stopped from outside)"
    return f"the worker process exited with code {exitcode} before finishing the job"


class LocalExecutor(RecordingExecutor):
    """Runs jobs in forked children of a forkserver that has torch preloaded (fast start-up)."""

    def __init__(self, *, worker_env: dict[str, str], max_concurrent: int):
        super().__init__()
        self.worker_env, self.max_concurrent = worker_env, max_concurrent
        self._ctx = multiprocessing.get_context("forkserver")
        self._queue: deque[str] = deque()
        self._running: dict[str, multiprocessing.Process] = {}
        self._cancelling: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._supervise, name="scv-executor", daemon=True)
        self.records: JobRecords | None = None

    def start(self, records: JobRecords) -> None:
        self.records = records
        # torch.optim imports torch._dynamo on a process's first optimizer (2-3 s): pay it once, here.
        self._ctx.set_forkserver_preload(["app.jobs.worker", "torch._dynamo"])
        # Warm the forkserver in the background so the first job does not pay torch's import.
        threading.Thread(target=forkserver.ensure_running, daemon=True).start()
        self._thread.start()

    def submit(self, version: str) -> None:
        with self._cond:
            self._queue.append(version)
            self._cond.notify()

    def recover(self, record: dict) -> None:
        """A record left by a previous service process: queued ones run, running ones lost their worker."""
        if record["status"] == "queued":
            self.submit(record["version"])
        else:
            self._finish(record["version"], "failed",
                         "the worker was lost: the service restarted while the job was running; resubmit it", TERMINAL)

    def cancel(self, version: str) -> bool:
        with self._cond:
            if version in self._queue:
                self._queue.remove(version)
                self._finish(version, "cancelled", None)
                return True
            process = self._running.get(version)
            if process is None:
                return False
            self._cancelling.add(version)
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        self._reap()
        return True

    def stop(self) -> None:
        """Stop supervising; running workers are ended and their jobs marked failed."""
        with self._cond:
            self._stopped = True
            running = dict(self._running)
            self._cond.notify()
        for version, process in running.items():
            process.kill()
            process.join()
            self._finish(version, "failed", "interrupted: the service stopped while the job was running; "
                                            "resubmit it", TERMINAL)
        with self._cond:
            self._running.clear()
        if self._thread.is_alive():
            self._thread.join(2)

    # -- supervision ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                self._reap_locked()
                self._retry_unrecorded()
                while self._queue and len(self._running) < self.max_concurrent:
                    self._launch_locked(self._queue.popleft())
                self._cond.wait(POLL_S)

    def _launch_locked(self, version: str) -> None:
        from app.jobs.worker import run_in_child

        process = self._ctx.Process(target=run_in_child, name=f"scv-train-{version}",
                                    args=(version, self.worker_env, self.max_concurrent), daemon=False)
        try:
            process.start()
        except OSError as exc:
            self._finish(version, "failed", f"could not start a worker process: {exc}")
            return
        self._running[version] = process
        log.info("job %s started in worker pid %s", version, process.pid)

    def _reap(self) -> None:
        with self._cond:
            self._reap_locked()

    def _reap_locked(self) -> None:
        for version, process in list(self._running.items()):
            if process.exitcode is None:
                continue
            del self._running[version]
            process.join()
            if version in self._cancelling:
                self._cancelling.discard(version)
                self._finish(version, "cancelled", None, TERMINAL)  # a job that just ended keeps its end
            else:
                self._finish(version, "failed", exit_reason(process.exitcode), TERMINAL)

