"""The Ray dispatcher: each attempt of a training job is a Ray job, submitted, watched and stopped over Ray's job
REST API."""

from __future__ import annotations

import logging
import threading

import httpx

from app.errors import ServiceError
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.settings import Settings, SettingsError

log = logging.getLogger(__name__)
POLL_S = 1.0
IN_FLIGHT = 32  # claims one dispatcher holds at once; Ray queues them by resources
RAY_TERMINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
MESSAGE_CHARS = 600
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class RayUnavailable(Exception):
    """Ray did not answer, or answered with an error worth retrying; the dispatcher retries on its next poll."""


class RayRefused(Exception):
    """Ray refused a submission (HTTP 4xx); the text is Ray's own words with secrets masked."""


class SubmissionTaken(RayRefused):
    """Ray already has a job with this submission id."""


def dashboard_url(address: str | None) -> str:
    """RAY_ADDRESS as an HTTP base URL; SettingsError when it is missing or not the dashboard's URL."""
    if not address or address.startswith("ray://"):
        raise SettingsError("RAY_ADDRESS: SCV_EXECUTOR=ray needs the Ray dashboard's HTTP URL, e.g. "
                            "http://ray-head:8265 (not a ray:// client address)")
    return (address if "://" in address else f"http://{address}").rstrip("/")


def submission_id(claim: Claim) -> str:
    """Ray's name for an attempt: the version for the first, `VERSION..attempt-N` for later ones (no version has
    `..` in it, so no later attempt's name is any job's version)."""
    return claim.version if claim.attempt == 1 else f"{claim.version}..attempt-{claim.attempt}"


class RayJobs:
    """A small client of Ray's job-submission REST API (/api/jobs/); never logs or echoes the request body."""

    def __init__(self, *, address: str, token: str | None, secrets: list[str]):
        self.address = address
        self._secrets = [s for s in secrets if s]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=address, headers=headers, timeout=httpx.Timeout(10.0, connect=3.0))

    def submit(self, claim: Claim, *, env: dict[str, str], num_cpus: float, num_gpus: float) -> str:
        """Start `python -m app.jobs.worker VERSION ATTEMPT` as a Ray job; returns its submission id."""
        sid = submission_id(claim)
        # Versions match ^[A-Za-z0-9][A-Za-z0-9._-]*$ (app.storage.layout), so they are safe in a shell command.
        body = {"entrypoint": f"python -m app.jobs.worker {claim.version} {claim.attempt}", "submission_id": sid,
                "runtime_env": {"env_vars": env}, "entrypoint_num_cpus": num_cpus,
                "metadata": {"scv_version": claim.version, "scv_attempt": str(claim.attempt)}}
        if num_gpus:
            body["entrypoint_num_gpus"] = num_gpus
        try:
            self._call("POST", "/api/jobs/", json=body, refusable=True)
        except SubmissionTaken:
            earlier = self.status(sid)
            if earlier is not None and earlier["status"] not in RAY_TERMINAL:
                raise
            # Ray keeps finished jobs: this one ran for an earlier job of the same version (deleted, then reused).
            self._call("DELETE", f"/api/jobs/{sid}")
            self._call("POST", "/api/jobs/", json=body, refusable=True)
        return sid

    def status(self, sid: str) -> dict | None:
        """Ray's view of the job (`status`, `message`, ...), or None when Ray does not know it."""
        response = self._call("GET", f"/api/jobs/{sid}")
        return None if response is None else response.json()

    def stop(self, sid: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL); False when Ray does not know it."""
        return self._call("POST", f"/api/jobs/{sid}/stop") is not None

    def ping(self) -> None:
        """RayUnavailable unless Ray answers."""
        self._call("GET", "/api/version")

    def close(self) -> None:
        self._http.close()

    def words(self, text: str, *, first: bool = False) -> str:
        """Ray's text in one short line, secrets masked: the last line (its tracebacks end with the error),
        or with `first` the first and last lines (a job's message: what happened, then its last log line)."""
        lines = [line.strip() for line in text.splitlines() if any(c.isalnum() for c in line)] or ["no message"]
        picked = " … ".join(dict.fromkeys([lines[0], lines[-1]])) if first else lines[-1]
        return self.redact(picked[:MESSAGE_CHARS])

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, method: str, path: str, *, json: dict | None = None,
              refusable: bool = False) -> httpx.Response | None:
        """Ray's answer, None for 404; RayRefused for a refused submission (404 too); RayUnavailable otherwise."""
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise RayUnavailable(self.redact(f"Ray at {self.address} did not answer ({type(exc).__name__}: {exc})")) \
                from None
        if response.status_code == 404 and refusable:
            raise RayRefused(f"HTTP 404 from {self.address}{path}; is RAY_ADDRESS the Ray dashboard's URL?")
        if response.status_code == 404:
            return None
        if response.is_success:
            return response
        words = f"HTTP {response.status_code}: {self.words(response.text)}"
        if refusable and "already exists" in response.text:  # HTTP 400, or 500 when the head relays it
            raise SubmissionTaken(words)
        if refusable and response.status_code < 500:
            raise RayRefused(words + ("; check RAY_AUTH_TOKEN" if response.status_code in (401, 403) else ""))
        raise RayUnavailable(f"Ray at {self.address} answered {words}")


class RayDispatcher:
    """Claims queued jobs and submits each attempt to Ray; the Ray-side worker renews the lease in the catalog.

    Ray schedules by resources (`num_cpus` per job, a GPU when SCV_DEVICE=cuda); at most IN_FLIGHT claims are held
    here at once. Until an attempt's worker has started (Ray keeps the job PENDING, or its process is still
    starting), this renews its lease; then the worker does. A Ray job that ends without recording an end (its node
    was lost, it was stopped from outside) gives the job back as a lost attempt."""

    def __init__(self, settings: Settings, queue: JobQueue):
        self.queue, address, env = queue, dashboard_url(settings.ray_address), settings.to_env()
        if settings.database_url is None and httpx.URL(address).host not in LOOPBACK:
            log.warning("the catalog is SQLite in SCV_DATA_DIR: Ray jobs reach it only on this machine; for a "
                        "Ray head elsewhere set SCV_DATABASE_URL to a PostgreSQL database every Ray node reaches")
        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        masked = [token or "", env.get("MINIO_SECRET_KEY", ""), env.get("MINIO_ACCESS_KEY", ""),
                  env.get("SCV_DATABASE_URL", "")]
        self.ray = RayJobs(address=address, token=token, secrets=masked)
        self.num_cpus, self.num_gpus = 1, 1 if settings.device == "cuda" else 0
        # Torch would use every core of the node while Ray counted only num_cpus of them.
        self.env = {**env, "OMP_NUM_THREADS": str(self.num_cpus)}
        self._lock = threading.Lock()
        self._inflight: dict[str, Claim] = {}  # Ray submission id -> the claim it runs
        self._started: set[str] = set()  # submission ids whose worker renews its own lease
        self._wake, self._stopped, self._ray_down = threading.Event(), False, False
        self._thread = threading.Thread(target=self._supervise, name="scv-ray-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, version: str) -> None:
        """Ask Ray to stop the job's Ray job if held here; `cancelled` is recorded at once for a Ray job Ray never
        started, else by the poll once Ray reports it stopped (or by its worker, at its next renewal)."""
        with self._lock:
            held = [(sid, claim) for sid, claim in self._inflight.items() if claim.version == version]
        for sid, claim in held:
            try:
                self._stop_attempt(sid, claim)
            except (RayUnavailable, ServiceError) as exc:
                log.warning("job %s: could not stop Ray job %s yet (%s); its worker stops at its next renewal",
                            version, sid, getattr(exc, "detail", exc))

    def stop(self) -> None:
        """Stop dispatching. Ray jobs that run keep their leases (their workers renew them); jobs Ray has not
        started are stopped there and go back to the queue."""
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(15)
        with self._lock:
            held, self._inflight = self._inflight, {}
        for sid, claim in held.items():
            try:
                if (info := self.ray.status(sid)) and info["status"] == "PENDING":
                    self.ray.stop(sid)
                    self.queue.release(claim)  # handed back, not lost: another dispatcher resubmits it
                else:
                    self._follow(sid, claim, info)
            except (RayUnavailable, ServiceError) as exc:
                log.warning("job %s: left to its lease (%s)", claim.version, getattr(exc, "detail", exc))
        self.ray.close()

    def _supervise(self) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._poll()
                self._dispatch()
                self._health(None)
            except RayUnavailable as exc:
                self._health(str(exc))
            except ServiceError as exc:
                log.warning("dispatcher: %s", exc.detail)

    def _dispatch(self) -> None:
        if self._ray_down:
            self.ray.ping()  # claim nothing while Ray is away: every claim would cost the job an attempt number
        while len(self._inflight) < IN_FLIGHT and not self._stopped and (claim := self.queue.claim()):
            try:
                sid = self.ray.submit(claim, env=self.env, num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            except RayRefused as exc:
                self.queue.finish(claim, "failed", error=f"Ray refused the job: {exc}")
                continue
            except RayUnavailable:
                self.queue.release(claim)  # back to the queue, for the next poll or another process
                raise
            with self._lock:
                self._inflight[sid] = claim
            log.info("job %s attempt %d submitted to Ray at %s as %s", claim.version, claim.attempt,
                     self.ray.address, sid)

    def _poll(self) -> None:
        with self._lock:
            held = dict(self._inflight)
        for sid, claim in held.items():
            info = self.ray.status(sid)  # RayUnavailable: the whole poll waits for Ray
            try:
                self._follow(sid, claim, info)
            except ServiceError as exc:  # the catalog is briefly away: the claim stays held, tried next poll
                log.warning("job %s: %s", claim.version, exc.detail)

    def _follow(self, sid: str, claim: Claim, info: dict | None) -> None:
        """Act on Ray's view of an attempt: renew its lease until its worker runs, give it back once it ended."""
        status = "UNKNOWN" if info is None else info["status"]
        if status in ("PENDING", "RUNNING"):
            if sid in self._started:
                return
            if status == "RUNNING" and self._worker_started(claim):
                self._started.add(sid)
                return
            try:
                cancelled = self.queue.renew(claim)
            except LeaseLost:  # taken back (its lease lapsed while Ray or the catalog was away): run nowhere
                self.ray.stop(sid)
                self._drop(sid)
                return
            if cancelled:  # asked through another process, which does not hold the claim
                self._stop_attempt(sid, claim)
            return
        message = self.ray.words((info or {}).get("message") or "", first=True)
        reason = {"STOPPED": f"the Ray job {sid} was stopped (Ray: {message})",
                  "FAILED": f"the Ray job {sid} failed (Ray: {message})",
                  "UNKNOWN": f"the Ray cluster does not know the Ray job {sid} any more (was it restarted?)"}.get(
            status, f"the Ray job {sid} ended without recording a result")
        self.queue.release(claim, reason=reason)  # fenced: a worker that recorded its end keeps it
        self._drop(sid)

    def _worker_started(self, claim: Claim) -> bool:
        """Whether the attempt's worker has named itself (it renews its own lease from then on)."""
        record = self.queue.get(claim.version)
        return record["attempts"] == claim.attempt and record["worker"] is not None

    def _stop_attempt(self, sid: str, claim: Claim) -> None:
        """Ask Ray to stop a cancelled job's Ray job; one Ray does not run is recorded `cancelled` now."""
        self.ray.stop(sid)
        if (info := self.ray.status(sid)) and info["status"] == "RUNNING":
            return  # the poll records `cancelled` once Ray reports it stopped
        # cancel_requested is set, so this records `cancelled`; a Ray job still PENDING finds its attempt gone.
        self.queue.release(claim, reason="cancelled")
        self._drop(sid)

    def _drop(self, sid: str) -> None:
        with self._lock:
            self._inflight.pop(sid, None)
            self._started.discard(sid)

    def _health(self, problem: str | None) -> None:
        """Log Ray going away (with why) and coming back, once each, not on every poll."""
        if problem and not self._ray_down:
            log.warning("%s; jobs wait and the dispatcher retries every %.0f s", problem, POLL_S)
        elif not problem and self._ray_down:
            log.info("Ray at %s answers again", self.ray.address)
        self._ray_down = bool(problem)
