"""A throw-away local Ray head for the Ray executor tests: loopback, free ports, its own temp dir and process group."""

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port",
              "runtime-env-agent-port")
RAY_TERMINAL = {"STOPPED", "SUCCEEDED", "FAILED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayHead:
    """`ray start --head --block` with token auth in a session of its own.

    `stop()` never runs `ray stop` (that kills every Ray process on the machine): it stops the head's
    jobs through the REST API (their entrypoints run in sessions of their own), then kills the head's
    process group and nothing else.
    """

    def __init__(self):
        self.token = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="scv-ray-"))  # short: Ray's socket paths must fit 107 bytes
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.url = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "LocalRayHead":
        bindir = Path(sys.executable).parent
        ray = bindir / "ray" if (bindir / "ray").exists() else shutil.which("ray")
        workers = random.randrange(20000, 32000, 100)  # worker ports: below Linux's ephemeral range
        # PATH first names this interpreter's bin: a job's `python -m app.jobs.worker` runs where `app` is installed.
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("RAY_ADDRESS", None)
        command = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                   *(f"--{flag}={port}" for flag, port in self.ports.items()),
                   f"--min-worker-port={workers}", f"--max-worker-port={workers + 99}", "--num-cpus=1",
                   "--num-gpus=0", "--include-dashboard=true", "--disable-usage-stats",
                   f"--temp-dir={self.root / 'ray'}", "--object-store-memory=100000000"]
        log = open(self.root / "head.log", "wb")  # noqa: SIM115 - the child writes it
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while True:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "head.log").read_text(errors="replace")[-3000:]
                    self.stop()
                    raise RuntimeError(f"the local Ray head did not come up:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/api/version").status_code == 200:
                        return self
                time.sleep(0.5)

    def client(self) -> httpx.Client:
        """An HTTP client of the head's dashboard, with its token."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def jobs(self) -> list[dict]:
        with self.client() as http:
            return http.get("/api/jobs/").raise_for_status().json()

    def job(self, submission_id: str) -> dict:
        with self.client() as http:
            return http.get(f"/api/jobs/{submission_id}").raise_for_status().json()

    def logs(self, submission_id: str) -> str:
        """What the job's entrypoint printed."""
        with self.client() as http:
            return http.get(f"/api/jobs/{submission_id}/logs").raise_for_status().json()["logs"]

    def stop_job(self, submission_id: str) -> None:
        with self.client() as http:
            http.post(f"/api/jobs/{submission_id}/stop").raise_for_status()

    def wait_status(self, submission_id: str, statuses: set[str], timeout: float = 60.0) -> dict:
        """Poll Ray until the job's status is one of `statuses` (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as http:
                response = http.get(f"/api/jobs/{submission_id}")
            job = response.json() if response.status_code == 200 else {"status": None}
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"Ray job {submission_id} still {job['status']} after {timeout}s"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError), self.client() as http:
            live = [j["submission_id"] for j in http.get("/api/jobs/").json()
                    if j.get("submission_id") and j["status"] not in RAY_TERMINAL]
            for submission_id in live:
                http.post(f"/api/jobs/{submission_id}/stop")
            deadline = time.monotonic() + 15
            while live and time.monotonic() < deadline:
                live = [s for s in live if http.get(f"/api/jobs/{s}").json()["status"] not in RAY_TERMINAL]
                time.sleep(0.3)
        # SIGKILL: on SIGTERM a Ray node drains for up to 30 s first.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)
