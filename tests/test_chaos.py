"""Chaos, seeded and bounded: two API replicas and a worker on PostgreSQL, a dozen small jobs, workers killed,
stopped and terminated at random and PostgreSQL restarted once. Every job ends `succeeded` once, every model's
ETag is its sha256, and a job that lived through it all has the weights of an uninterrupted run of its request.

Loopback only: the replicas, the worker, S3 and PostgreSQL are processes of this machine.
"""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load

from tests.support.replicas import Replica, replica_env
from tests.support.waiting import TERMINAL, wait_for

pytestmark = pytest.mark.slow
NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
       {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
JOB = {"dataset": "mnist", "layers": NET, "epochs": 40, "batch_size": 1}  # ~2,400 steps: long enough to be hit
JOBS = 12
LEASE_S = 3
DISRUPTIONS = 8  # then the jobs are left to finish
AT_LEAST = 6  # of them while jobs still ran (a fast machine may finish the jobs first), the restart among them
DEADLINE_S = 300
HEADERS = {"Authorization": "Bearer replica-test-token"}


class Worker:
    """`scv worker` in its own session, restarted by the test as a supervisor would."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env = tmp, env
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        with open(self.tmp / "worker.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=self.tmp, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self) -> str:
        return (self.tmp / "worker.log").read_text(errors="replace")[-3000:]

    def signal(self, sig: int) -> None:
        """Send `sig` (to a stopped worker, SIGCONT first, as a supervisor's stop does); one it ends starts again."""
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                stacks = subprocess.run(["py-spy", "dump", "--pid", str(self.process.pid)], capture_output=True,
                                        text=True, check=False).stdout if shutil.which("py-spy") else ""
                raise AssertionError(f"scv worker did not end within 60 s of {signal.Signals(sig).name}:\n"
                                     f"{stacks}\n{self.log_tail()}") from None
            self.process = self._start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(60)


def _get(client: httpx.Client, path: str) -> httpx.Response:
    """GET through an outage: a 503 (PostgreSQL restarting) or a refused connection is tried again."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = client.get(path, headers=HEADERS)
            if r.status_code != 503:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"GET {path} kept failing"
        time.sleep(0.2)


def _all_ended(client: httpx.Client, versions: list[str]) -> bool:
    return all(_get(client, f"/train/{v}").json()["status"] in TERMINAL for v in versions)


def _running_pids(client: httpx.Client, versions: list[str]) -> list[int]:
    records = [_get(client, f"/train/{v}").json() for v in versions]
    return [r["worker"]["pid"] for r in records if r["status"] == "running" and r["worker"]]


def _stop_for_a_while(pid: int, seconds: float) -> None:
    """SIGSTOP past the lease, then SIGCONT: the woken attempt must find its lease gone and change nothing."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    timer = threading.Timer(seconds, lambda: _signal_quietly(pid, signal.SIGCONT))
    timer.daemon = True
    timer.start()


def _signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(DEADLINE_S + 300)
@pytest.mark.parametrize("seed", [1, 2])
def test_jobs_survive_killed_workers_and_a_postgresql_restart(seed, seeded_settings, postgres_server, postgres_url,
                                                              tmp_path):
    rng = random.Random(seed)
    env = {**replica_env(seeded_settings, postgres_url, tmp_path, bucket=f"models-chaos-{seed}", lease=LEASE_S),
           "SCV_CHECKPOINT_SECONDS": "0.2", "SCV_MAX_ATTEMPTS": "50"}
    replicas, worker = [], None
    try:
        replicas = [Replica(tmp_path, {**env, "SCV_MAX_CONCURRENT_JOBS": "0"}) for _ in range(2)]
        for replica in replicas:
            replica.client.headers.update(HEADERS)
        worker = Worker(tmp_path, {**env, "SCV_MAX_CONCURRENT_JOBS": "2"})
        versions = []
        for i in range(JOBS):
            r = replicas[i % 2].client.post("/train", json={**JOB, "seed": i, "version": f"chaos-{seed}-{i}"})
            assert r.status_code == 202, r.text
            versions.append(r.json()["version"])

        actions = [rng.choice(["kill-child", "stop-child", "term-worker", "kill-worker", "stop-worker"])
                   for _ in range(DISRUPTIONS - 1)]
        actions.insert(rng.randrange(AT_LEAST), "restart-postgres")
        deadline = time.monotonic() + DEADLINE_S
        done = []
        for action in actions:
            while not (pids := _running_pids(rng.choice(replicas).client, versions)):  # something to disturb
                if _all_ended(replicas[0].client, versions):
                    break
                assert time.monotonic() < deadline, f"no job started: {done}\n{worker.log_tail()}"
                time.sleep(0.2)
            if not pids:
                break
            time.sleep(rng.uniform(0.5, 2.0))
            done.append(action)
            if action == "kill-child":
                _signal_quietly(rng.choice(pids), signal.SIGKILL)
            elif action == "stop-child":
                _stop_for_a_while(rng.choice(pids), LEASE_S + 1)
            elif action == "term-worker":
                worker.signal(signal.SIGTERM)  # its jobs go back to the queue at once
            elif action == "kill-worker":
                worker.signal(signal.SIGKILL)  # its children die with it; their leases lapse
            elif action == "stop-worker":
                _stop_for_a_while(worker.process.pid, LEASE_S + 1)
            elif action == "restart-postgres":
                postgres_server.restart()
        assert len(done) >= AT_LEAST, f"the jobs ended before most disruptions: {done} of {actions}"
        while not _all_ended(replicas[0].client, versions):
            assert time.monotonic() < deadline, f"jobs unfinished after {DEADLINE_S}s; {actions}\n{worker.log_tail()}"
            time.sleep(0.5)

        client = replicas[0].client
        records = {v: _get(client, f"/train/{v}").json() for v in versions}
        assert {v: r["status"] for v, r in records.items()} == dict.fromkeys(versions, "succeeded"), actions
        listed = [item["version"] for item in _get(client, "/models?limit=1000").json()["items"]]
        assert sorted(listed) == sorted(versions)  # each once
        for version in versions:
            r = _get(client, f"/models/{version}")
            assert r.status_code == 200 and r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'

        # The job that took the most attempts, trained again with nothing in its way, ends with the same weights.
        chosen = max(versions, key=lambda v: records[v]["attempts"])
        seed_of = versions.index(chosen)
        r = client.post("/train", json={**JOB, "seed": seed_of, "version": f"{chosen}-again"})
        assert r.status_code == 202, r.text
        again = wait_for(client, f"{chosen}-again", timeout=120)
        assert again["status"] == "succeeded", again["error"]
        want = load(_get(client, f"/models/{chosen}-again").content)
        got = load(_get(client, f"/models/{chosen}").content)
        assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want), (chosen, records[chosen])
        assert again["metrics"] == records[chosen]["metrics"]
    finally:
        if worker is not None:
            worker.stop()
        for replica in replicas:
            replica.stop(signal.SIGKILL)
