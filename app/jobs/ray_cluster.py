"""The Ray executor: each training job is a Ray job, submitted, watched and stopped over Ray's job REST API."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import httpx

from app.errors import ServiceError
from app.jobs.service import TERMINAL, JobNotFound, JobRecords, RecordingExecutor
from app.settings import Settings, SettingsError

log = logging.getLogger(__name__)
POLL_S = 1.0
CANCEL_WAIT_S = 15.0  # how long DELETE /train/{version} waits for Ray to stop a running job
RAY_TERMINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
MESSAGE_CHARS = 600


class RayUnavailable(Exception):
    """Ray did not answer, or answered with an error worth retrying; the executor retries on its next poll."""


class RayRefused(Exception):
    """Ray refused a submission (HTTP 4xx); the text is Ray's own words with secrets masked."""


def dashboard_url(address: str | None) -> str:
    """RAY_ADDRESS as an HTTP base URL; SettingsError when it is missing or not the dashboard's URL."""
    if not address or address.startswith("ray://"):
        raise SettingsError("RAY_ADDRESS: SCV_EXECUTOR=ray needs the Ray dashboard's HTTP URL, e.g. "
                            "http://ray-head:8265 (not a ray:// client address)")
    return (address if "://" in address else f"http://{address}").rstrip("/")


class RayJobs:
    """A small client of Ray's job-submission REST API (/api/jobs/); never logs or echoes the request body."""

    def __init__(self, *, address: str, token: str | None, secrets: list[str]):
        self.address = address
        self._secrets = [s for s in secrets if s]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=address, headers=headers, timeout=httpx.Timeout(10.0, connect=3.0))

    def submit(self, version: str, *, env: dict[str, str], num_cpus: float, num_gpus: float) -> None:
        """Start `python -m app.jobs.worker VERSION` as Ray job VERSION; a job Ray already has counts as submitted."""
        # Versions match ^[A-Za-z0-9][A-Za-z0-9._-]*$ (app.storage.layout), so they are safe in a shell command.
        body = {"entrypoint": f"python -m app.jobs.worker {version}", "submission_id": version,
                "runtime_env": {"env_vars": env}, "entrypoint_num_cpus": num_cpus,
                "metadata": {"scv_version": version}}
        if num_gpus:
            body["entrypoint_num_gpus"] = num_gpus
        if self._call("POST", "/api/jobs/", json=body, refusable=True) is None:
            raise RayRefused(f"HTTP 404 from {self.address}/api/jobs/; is RAY_ADDRESS the Ray dashboard's URL?")

    def status(self, version: str) -> dict | None:
        """Ray's view of the job (`status`, `message`, ...), or None when Ray does not know it."""
        response = self._call("GET", f"/api/jobs/{version}")
        return None if response is None else response.json()

    def stop(self, version: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL); False when Ray does not know it."""
        return self._call("POST", f"/api/jobs/{version}/stop") is not None

    def close(self) -> None:
        self._http.close()

    def words(self, text: str, *, first: bool = False) -> str:
        """Ray's text in one short line, secrets masked: the last line (its tracebacks end with the error),
        or with `first` the first and last lines (a job's message: what happened, then its last log line)."""
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or ["no message"]
        picked = " … ".join(dict.fromkeys([lines[0], lines[-1]])) if first else lines[-1]
        return self.redact(picked[:MESSAGE_CHARS])

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, method: str, path: str, *, json: dict | None = None,
              refusable: bool = False) -> httpx.Response | None:
        """Ray's answer, None for 404; RayRefused for a refused submission; RayUnavailable otherwise."""
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise RayUnavailable(self.redact(f"Ray at {self.address} did not answer ({type(exc).__name__}: {exc})")) \
                from None
        if response.status_code == 404:
            return None
        if response.is_success or "already exists" in response.text:  # resubmission of the same version
            return response
        words = f"HTTP {response.status_code}: {self.words(response.text)}"
        if refusable and response.status_code < 500:
            raise RayRefused(words + ("; check RAY_AUTH_TOKEN" if response.status_code in (401, 403) else ""))
        raise RayUnavailable(f"Ray at {self.address} answered {words}")


class RayExecutor(RecordingExecutor):
    """Submits jobs to Ray and reconciles Ray's view with the job records, which stay the truth.

    Ray schedules by resources (`num_cpus` per job, a GPU when SCV_DEVICE=cuda): SCV_MAX_CONCURRENT_JOBS
    does not apply. Workers write their own records; this writes what they cannot (cancelled; died)."""

    def __init__(self, *, address: str | None, worker_env: dict[str, str], token: str | None = None,
                 num_cpus: float = 1, num_gpus: float = 0):
        super().__init__()
        masked = [token or "", worker_env.get("MINIO_SECRET_KEY", ""), worker_env.get("MINIO_ACCESS_KEY", "")]
        self.ray = RayJobs(address=dashboard_url(address), token=token, secrets=masked)
        # Torch would use every core of the node while Ray counted only num_cpus of them.
        self.env = {**worker_env, "OMP_NUM_THREADS": str(max(1, int(num_cpus)))}
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._lock = threading.RLock()
        self._pending: deque[str] = deque()  # versions to submit to Ray
        self._watching: dict[str, str | None] = {}  # submitted versions -> Ray's last status (None: not asked)
        self._cancelling: dict[str, bool] = {}  # versions we are stopping -> whether Ray took the stop
        self._wake, self._stopped, self._ray_down = threading.Event(), False, False
        self._thread = threading.Thread(target=self._supervise, name="scv-ray-executor", daemon=True)
        self.records: JobRecords | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RayExecutor:
        from app.jobs.worker import worker_env

        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        return cls(address=settings.ray_address, worker_env=worker_env(settings), token=token,
                   num_gpus=1 if settings.device == "cuda" else 0)

    def start(self, records: JobRecords) -> None:
        self.records = records
        self._thread.start()

    def submit(self, version: str) -> None:
        with self._lock:
            self._pending.append(version)
        self._wake.set()

    def recover(self, record: dict) -> None:
        """A queued or running record from before a restart: ask Ray about it (the next poll decides)."""
        with self._lock:
            self._watching[record["version"]] = None
        self._wake.set()

    def cancel(self, version: str) -> bool:
        with self._lock:
            if version in self._pending:
                self._pending.remove(version)
                self._finish(version, "cancelled", None)
                return True
            if version not in self._watching:
                return False
            self._cancelling[version] = False
            self._send_stop(version)
        info = self._wait_stopped(version)
        with self._lock:
            if version in self._watching and (info is None or info["status"] in RAY_TERMINAL):
                self._forget(version)
            # A stopped PENDING job may still start for a moment; the poll rewrites `cancelled` if so.
            self._finish(version, "cancelled", None, keep=TERMINAL)
        return True

    def stop(self) -> None:
        """Stop watching. Ray jobs keep running and write their own records; the next start watches them again."""
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(15)
        self.ray.close()

    def _supervise(self) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._submit_pending()
                self._poll()
                self._health(None)
            except RayUnavailable as exc:
                self._health(str(exc))
            with self._lock:
                self._retry_unrecorded()

    def _submit_pending(self) -> None:
        with self._lock:  # held across the POST so that cancel() never sees a version half-submitted
            while self._pending and not self._stopped:
                version = self._pending[0]
                try:  # RayUnavailable leaves the version pending, for the next poll
                    self.ray.submit(version, env=self.env, num_cpus=self.num_cpus, num_gpus=self.num_gpus)
                    self._watching[version] = "PENDING"
                    log.info("job %s submitted to Ray at %s", version, self.ray.address)
                except RayRefused as exc:
                    self._finish(version, "failed", f"Ray refused the job: {exc}")
                self._pending.popleft()

    def _poll(self) -> None:
        with self._lock:
            versions = list(self._watching)
        for version in versions:
            info = self.ray.status(version)  # outside the lock: cancel() must not wait on a slow poll
            with self._lock:
                if version in self._watching:
                    self._observe(version, info)

    def _observe(self, version: str, info: dict | None) -> None:
        """Reconcile one job's record with Ray's view of it."""
        status = "UNKNOWN" if info is None else info["status"]  # UNKNOWN: never submitted, or Ray lost it
        if status not in RAY_TERMINAL | {"UNKNOWN"}:
            self._watching[version] = status
            if self._cancelling.get(version) is False:
                self._send_stop(version)
            return
        if self._forget(version):
            self._finish(version, "cancelled", None, keep=TERMINAL)
        elif status == "UNKNOWN":
            self._lost(version)
        else:
            message = self.ray.words(info.get("message") or "", first=True)
            reason = {"STOPPED": f"the Ray job was stopped from outside the service (Ray: {message})",
                      "FAILED": f"the Ray job failed: {message}"}.get(status, "the Ray job ended without a result")
            self._finish(version, "failed", reason, keep=TERMINAL)  # unless the worker recorded its own end

    def _lost(self, version: str) -> None:
        """Ray does not know a job we watch: submit it if still queued; a running one lost its worker."""
        try:
            status = self.records.get(version)["status"]
        except JobNotFound:
            return
        except ServiceError:
            self._watching[version] = None  # storage is down: ask Ray and storage again on the next poll
            return
        if status == "queued":
            self._pending.append(version)
        elif status == "running":
            self._finish(version, "failed", "the Ray cluster does not know this job any more (was it restarted?); "
                                            "its worker is lost; resubmit the job", keep=TERMINAL)

    def _send_stop(self, version: str) -> None:
        try:
            self.ray.stop(version)
            self._cancelling[version] = True
        except RayUnavailable as exc:
            log.warning("could not stop Ray job %s yet (%s); retrying", version, exc)

    def _wait_stopped(self, version: str) -> dict | None:
        """Ray's view once the job stopped, is still PENDING (never started), or CANCEL_WAIT_S passed."""
        deadline, info = time.monotonic() + CANCEL_WAIT_S, {"status": "UNKNOWN"}
        while time.monotonic() < deadline:
            try:
                info = self.ray.status(version)
            except RayUnavailable:
                break
            if info is None or info["status"] in RAY_TERMINAL | {"PENDING"}:
                break
            time.sleep(0.2)
        return info

    def _forget(self, version: str) -> bool:
        """Stop watching a job; True when we were cancelling it."""
        self._watching.pop(version, None)
        return self._cancelling.pop(version, None) is not None

    def _health(self, problem: str | None) -> None:
        """Log Ray going away (with why) and coming back, once each, not on every poll."""
        if problem and not self._ray_down:
            log.warning("%s; jobs wait and the executor retries every %.0f s", problem, POLL_S)
        elif not problem and self._ray_down:
            log.info("Ray at %s answers again", self.ray.address)
        self._ray_down = bool(problem)

