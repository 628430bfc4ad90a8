"""The throwaway PostgreSQL gives each test its own database, reachable through SQLAlchemy and psycopg."""

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def _psycopg(url: str) -> psycopg.Connection:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))


def test_a_fresh_database_takes_writes(postgres_url):
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n int)"))
        conn.execute(text("INSERT INTO t VALUES (1), (2)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(n) FROM t")).scalar_one() == 3
    engine.dispose()


def test_two_databases_are_distinct(postgres_server, postgres_url):
    other = postgres_server.create_database()
    try:
        assert make_url(other).database != make_url(postgres_url).database
        with _psycopg(postgres_url) as conn:
            conn.execute("CREATE TABLE only_here (n int)")
        with _psycopg(other) as conn:
            assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall() == []
    finally:
        postgres_server.drop_database(other)
