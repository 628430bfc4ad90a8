"""The catalog's engine: connections, read and write transactions, the database clock, insert-if-absent, migrations at
start-up."""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Connection, Float, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from app.db.watchdog import Watchdog
from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
IDLE_IN_TX_MS = 10_000
# A stalled PostgreSQL answers a request with 503 within CALL_S + CONNECT_S (a dead pooled connection, then a
# new one that cannot connect); the server itself ends a slow statement a second before the watchdog would.
CALL_S, CONNECT_S, STATEMENT_MS = 5.0, 3, 4_000
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
             "tcp_user_timeout": 10_000}  # a network path that drops packets is given up after ~10-25 s
_ADVISORY_KEY = 0x5C7_CA7A  # one PostgreSQL advisory lock for every process migrating this catalog


class db_now(FunctionElement):  # noqa: N801 - reads as SQL
    """The database's clock in seconds since the epoch: leases are compared on one clock, not on each worker's."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _sqlite_now(element, compiler, **kw) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _postgresql_now(element, compiler, **kw) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


def dialect_insert(conn: Connection, table):
    """An INSERT into `table` in the connection's dialect, the one that can say ON CONFLICT."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def insert_absent(conn: Connection, table, values: dict) -> int:
    """Insert a row unless its primary key exists (another process may be writing too); 1 when inserted."""
    statement = dialect_insert(conn, table).values(**values).on_conflict_do_nothing().returning(table.version)
    return len(conn.execute(statement).all())  # rowcount is not reliable for this statement on every driver


class Database:
    """One engine per process; `read()` and `write()` transactions turn driver failures into a 503."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.shown = self.url.render_as_string(hide_password=True)  # safe for logs and error bodies
        self.sqlite = self.url.get_backend_name() == "sqlite"
        if self.sqlite:
            self.engine = create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
            self.watchdog = None
        else:
            # A client frozen inside a transaction (SIGSTOP, a hung VM) must not hold its row locks for ever:
            # the server ends such a session, and the lease of the job it held lapses as usual.
            options = f"-c idle_in_transaction_session_timeout={IDLE_IN_TX_MS} -c statement_timeout={STATEMENT_MS}"
            self.engine = create_engine(self.url, pool_size=5, max_overflow=10, connect_args={
                "connect_timeout": CONNECT_S, "options": options, **KEEPALIVE})
            self.watchdog = Watchdog(CALL_S)
            event.listen(self.engine, "connect", _mark_fresh)
            event.listen(self.engine, "checkout", self._checkout)

    @contextmanager
    def read(self, *, bounded: bool = True) -> Iterator[Connection]:
        """A read-only transaction; `bounded`: on PostgreSQL it must end within CALL_S (else 503)."""
        with self._translated(), self._deadline(bounded), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, *, bounded: bool = True) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE), so it never
        fails half-way on a lock upgrade and waits its turn instead. `bounded` as for `read`."""
        with self._translated(), self._deadline(bounded), self.engine.connect() as conn:
            conn.execution_options(scv_write=True)
            with conn.begin():
                yield conn

    def _deadline(self, bounded: bool):
        return self.watchdog.armed() if bounded and self.watchdog is not None else nullcontext()

    def _checkout(self, dbapi_connection, record, _proxy) -> None:
        """Put a pooled connection under the transaction's deadline and make sure it still answers (what
        `pool_pre_ping` does, but under the deadline); a dead one is replaced once by the pool."""
        self.watchdog.attach(dbapi_connection.fileno())
        if record.info.pop("fresh", False):
            return
        try:
            self.engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if not isinstance(exc, OperationalError) and not exc.connection_invalidated:
                raise  # a programming or integrity error, not an outage
            reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
            raise DatabaseUnavailable(f"the catalog database ({self.shown}) did not answer: {reason[:200]}; "
                                      "retry shortly", database=self.shown) from None

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def migrate(self, *, patience_s: float = 60.0) -> None:
        """Bring the schema to the newest migration, logging one line that says what it did; waits for a database
        that is still starting (compose, Kubernetes), and is safe when several processes start at once."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(config).get_current_head()
        deadline = time.monotonic() + patience_s
        while True:
            try:
                with self._translated(), self._migration_lock(), self.write(bounded=False) as conn:
                    found = MigrationContext.configure(conn).get_current_revision()
                    if found != head:
                        if not self.sqlite:  # a migration may rewrite a big table
                            conn.execute(text("SET LOCAL statement_timeout = 0"))
                        config.attributes["connection"] = conn
                        command.upgrade(config, "head")
                break
            except DatabaseUnavailable as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s; retrying", exc.detail)
                time.sleep(2.0)
        if found == head:
            log.info("catalog schema up to date at %s", head)
        else:
            log.info("catalog schema: migrated %s → %s", found or "empty", head)

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.sqlite:  # a lock file beside the database file
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            with open(f"{self.url.database}.migrate-lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            return
        with self.engine.connect() as conn:  # a session-level lock on its own connection, held until done
            conn.execute(text("SET LOCAL statement_timeout = 0"))  # another process may migrate for a while
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_KEY})
                conn.commit()

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, and in a forked child before first use)."""
        self.engine.dispose()


def _mark_fresh(_dbapi_connection, record) -> None:
    record.info["fresh"] = True  # just connected: no need to ping it at its first checkout


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin, not by the driver
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("scv_write") else "BEGIN")
