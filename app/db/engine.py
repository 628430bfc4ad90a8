"""The catalog's engine: connections, read and write transactions, the database clock, insert-if-absent, migrations at
start-up."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Float, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
IDLE_IN_TX_MS = 10_000
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


def insert_absent(conn: Connection, table, values: dict) -> int:
    """Insert a row unless its primary key exists (another process may be writing too); 1 when inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(table.version)
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
        else:
            # A client frozen inside a transaction (SIGSTOP, a hung VM) must not hold its row locks for ever:
            # the server ends such a session, and the lease of the job it held lapses as usual.
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={
                "connect_timeout": 5, "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TX_MS}"})

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self._translated(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE), so it never
        fails half-way on a lock upgrade and waits its turn instead."""
        with self._translated(), self.engine.connect() as conn:
            conn.execution_options(scv_write=True)
            with conn.begin():
                yield conn

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

    def migrate(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.write() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.sqlite:
            database = self.url.database
            if not database or database == ":memory:":
                yield
                return
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            with open(f"{database}.migrate-lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            return
        with self.engine.connect() as conn:  # a session-level lock on its own connection, held until done
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_KEY})
                conn.commit()

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, and in a forked child before first use)."""
        self.engine.dispose()


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin, not by the driver
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("scv_write") else "BEGIN")
