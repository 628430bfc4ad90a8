"""A throwaway PostgreSQL for the tests: one server per session, a fresh database per test."""

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

URL_ENV = "SCV_TEST_POSTGRES_URL"
SETTINGS = {"listen_addresses": "127.0.0.1", "fsync": "off", "full_page_writes": "off",
            "synchronous_commit": "off", "max_connections": "200"}


class PostgresUnavailable(Exception):
    """No PostgreSQL server for the tests; the message says why and what to do."""


@dataclass
class PostgresServer:
    """A server the tests may create and drop databases on."""

    url: URL
    admin: Engine
    restart_server: Callable[[], None] | None = None  # only for a server these helpers started

    def restart(self) -> None:
        """Stop the server fast (every session cut) and start it again on the same port and data."""
        if self.restart_server is None:
            raise PostgresUnavailable(f"{URL_ENV} names a server these tests did not start: it cannot be restarted")
        self.restart_server()
        self.admin.dispose()  # its pooled connections died with the server

    def create_database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        name = f"test_{secrets.token_hex(6)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, even with sessions still open on it."""
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(re.search(r"/(\d+)/bin/", p)[1]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LocalServer:
    """initdb + pg_ctl in a temp dir, as the postgres user when we are root (PostgreSQL refuses root)."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.as_user = ["runuser", "-u", "postgres", "--"] if user else []
        # Not pytest's tmp dirs: they are 0700 root's, so the postgres user could not reach them.
        self.dir = Path(tempfile.mkdtemp(prefix="scv-pg-"))
        if user:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data = self.dir / "data"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / tool), *args], check=True, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)

    def start(self) -> int:
        """Initialise the cluster and start it on a free loopback port, which it returns."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        for _ in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            options = " ".join(f"-c {k}={v}" for k, v in
                               {**SETTINGS, "port": port, "unix_socket_directories": self.dir}.items())
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                          "-l", str(self.dir / "server.log"), "-o", options)
                return port
            except subprocess.CalledProcessError:
                continue
        raise RuntimeError(f"pg_ctl start failed three times: {self.log_tail()}")

    def restart(self) -> None:
        # -l: without a log file the server would keep pg_ctl's output pipe open, and pg_ctl would never return
        self._run("pg_ctl", "restart", "-m", "fast", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.dir / "server.log"))

    def log_tail(self) -> str:
        """The end of the server's log, for a failure message."""
        with contextlib.suppress(OSError):
            return (self.dir / "server.log").read_text()[-2000:]
        return ""

    def stop(self) -> None:
        """Stop the server without a checkpoint and remove its files."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.dir, ignore_errors=True)


def _serve(url: URL) -> PostgresServer:
    server = PostgresServer(url=url, admin=create_engine(url, isolation_level="AUTOCOMMIT"))
    with server.admin.connect() as conn:
        conn.execute(text("SELECT 1"))
    return server


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """$SCV_TEST_POSTGRES_URL's server, or a throwaway one from this machine's initdb, until the block ends.

    Raises PostgresUnavailable when there is neither."""
    if given := os.environ.get(URL_ENV):
        url = make_url(given).set(drivername="postgresql+psycopg")
        try:
            server = _serve(url)
        except Exception as e:
            raise PostgresUnavailable(f"{URL_ENV}={url.render_as_string()} does not answer: {e}") from e
        try:
            yield server
        finally:
            server.admin.dispose()
        return
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            f"no initdb in /usr/lib/postgresql/*/bin or on PATH: apt-get install postgresql or set {URL_ENV}")
    try:
        local = _LocalServer(bin_dir)
    except KeyError:
        raise PostgresUnavailable("running as root, and there is no postgres user to run the server as") from None
    try:
        port = local.start()
        server = _serve(URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port,
                                   database="postgres"))
        server.restart_server = local.restart
    except Exception as e:
        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else e
        log = local.log_tail()
        local.stop()
        raise PostgresUnavailable(f"could not start one from {bin_dir}: {detail}\n{log}") from e
    try:
        yield server
    finally:
        server.admin.dispose()
        local.stop()
