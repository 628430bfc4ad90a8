"""Shared fixtures: one real S3 server (embedded SeaweedFS) per test session, apps wired to it."""

import os
import subprocess
from collections.abc import Iterator
from typing import NoReturn

import pytest
from fastapi.testclient import TestClient
from minio import Minio
from sqlalchemy.engine import URL, make_url

from app.main import create_app
from app.settings import Settings
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store
from tests.support.postgres import URL_ENV, PostgresServer, _bin_dir, _LocalServer, _serve
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, drop_bucket, make_settings

pytest_plugins = ["tests.fixtures_datasets"]


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> EmbeddedS3:
    """A running `weed mini` for the whole session; tests may pause/resume it for fault injection."""
    server = EmbeddedS3(data_dir=tmp_path_factory.mktemp("s3"), access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    server.start(ready_check=lambda: _store(server.endpoint).buckets_exist("probe"))
    yield server
    server.stop()


def _store(endpoint: str) -> Store:
    return Store(endpoint=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, timeout_s=5.0)


@pytest.fixture(scope="session")
def store(s3) -> Store:
    """A Store client on the session's S3 server."""
    return _store(s3.endpoint)


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


def _unavailable(reason: str) -> NoReturn:
    # CI promises a server (.ci/run installs one): a missing one there is a broken CI, not a skip.
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"no PostgreSQL for the tests: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL for the tests: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """$SCV_TEST_POSTGRES_URL's server, or a throwaway one from this machine's initdb for the session."""
    if given := os.environ.get(URL_ENV):
        url = make_url(given).set(drivername="postgresql+psycopg")
        try:
            server = _serve(url)
        except Exception as e:
            _unavailable(f"{URL_ENV}={url.render_as_string()} does not answer: {e}")
        try:
            yield server
        finally:
            server.admin.dispose()
        return
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable(f"no initdb in /usr/lib/postgresql/*/bin or on PATH: apt-get install postgresql or set {URL_ENV}")
    try:
        local = _LocalServer(bin_dir)
    except KeyError:
        _unavailable("running as root, and there is no postgres user to run the server as")
    try:
        port = local.start()
        server = _serve(URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port,
                                   database="postgres"))
    except Exception as e:
        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else e
        log = local.log_tail()
        local.stop()
        _unavailable(f"could not start one from {bin_dir}: {detail}\n{log}")
    try:
        yield server
    finally:
        server.admin.dispose()
        local.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database's SQLAlchemy URL (postgresql+psycopg://...), dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
