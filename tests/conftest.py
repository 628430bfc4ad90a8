"""Shared fixtures: one real S3 server (embedded SeaweedFS) per test session, apps wired to it."""

import contextlib
import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from minio import Minio

from app.main import create_app
from app.settings import Settings
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store
from tests.support.postgres import PostgresServer, PostgresUnavailable, running_postgres
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, drop_bucket, make_settings, start_s3, store_on

pytest_plugins = ["tests.fixtures_datasets"]


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> EmbeddedS3:
    """A running `weed mini` for the whole session; tests may pause/resume it for fault injection."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def store(s3) -> Store:
    """A Store client on the session's S3 server."""
    return store_on(s3)


@pytest.fixture(scope="session")
def s3_admin(s3) -> Minio:
    """A plain S3 client for what the service never does: listing and deleting buckets."""
    return Minio(s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)


@pytest.fixture(autouse=True)
def _drop_new_buckets(request):
    """Delete the buckets a test made on the session's server, when the test ends.

    SeaweedFS gives every bucket volumes of its own, so a suite that kept them would run out of volumes. Buckets
    of session- and module-scoped fixtures exist before this fixture looks (pytest sets up wider scopes first), so
    they stay for the tests that share them.
    """
    if "s3" not in request.fixturenames:
        yield
        return
    client = request.getfixturevalue("s3_admin")
    before = {b.name for b in client.list_buckets()}
    yield
    for bucket in {b.name for b in client.list_buckets()} - before:
        drop_bucket(client, bucket)


@pytest.fixture
def settings(s3, tmp_path) -> Settings:
    """Per-test settings with their own buckets."""
    return make_settings(s3, tmp_path)


@pytest.fixture
def client(settings):
    """A client of a fresh app (lifespan run) on the per-test settings."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """$SCV_TEST_POSTGRES_URL's server, or a throwaway one from this machine's initdb for the session."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except PostgresUnavailable as e:
            # CI promises a server (.ci/run installs one): a missing one there is a broken CI, not a skip.
            if os.environ.get("CI", "").lower() not in ("", "0", "false"):
                pytest.fail(f"no PostgreSQL for the tests: {e}", pytrace=False)
            pytest.skip(f"no PostgreSQL for the tests: {e}")
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database's SQLAlchemy URL (postgresql+psycopg://...), dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
