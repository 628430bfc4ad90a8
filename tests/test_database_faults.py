"""The catalog database goes away while the service works: 503 with Retry-After, no password shown, recovery
without a restart, and the queue carries on.

A real PostgreSQL behind a TCP fault proxy (tests/support/faultproxy.py) that refuses connections and cuts the open
ones on demand: a database that went down, which the real server cannot be asked to do and come back from.
"""

import hashlib
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from app.main import create_app
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]
LONG = {"dataset": "mnist", "layers": SMALL_NET, "epochs": 100, "batch_size": 1}  # runs until it is cancelled
PASSWORD = "pw-" + secrets.token_hex(12)  # trust authentication accepts any password; none may leak


@pytest.fixture
def cut_database(postgres_url):
    """A fault proxy in front of the test database, and a URL (with a password) that goes through it."""
    url = make_url(postgres_url)
    proxy = FaultProxy(f"{url.host}:{url.port}")
    host, port = proxy.endpoint.rsplit(":", 1)
    yield proxy, url.set(host=host, port=int(port), password=PASSWORD).render_as_string(hide_password=False)
    proxy.close()


def _running(client, version: str, *, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (record := client.get(f"/train/{version}").json())["status"] != "running" or not record["worker"]:
        assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
        time.sleep(0.05)


def _logged(caplog, text: str, *, after: int, timeout: float = 30.0) -> None:
    """Wait until a log record containing `text` appears among the records after index `after`."""
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records[after:]):
        assert time.monotonic() < deadline, f"nothing logged {text!r}"
        time.sleep(0.05)


def test_database_outage_is_503_naming_the_database_and_every_route_recovers(
        cut_database, seeded_settings, tmp_path, caplog):
    proxy, database_url = cut_database
    settings = seeded_settings.model_copy(update={
        "database_url": SecretStr(database_url), "minio_model_bucket": f"models-dbfaults-{secrets.token_hex(4)}",
        "data_dir": tmp_path / "data"})
    caplog.set_level(logging.INFO)
    bodies: list[str] = []

    def call(client, method: str, path: str, **kwargs):
        r = client.request(method, path, **kwargs)
        bodies.append(r.text)
        return r

    with TestClient(create_app(settings)) as client:
        shown = client.app.state.db.shown
        assert PASSWORD not in shown and make_url(database_url).database in shown
        done = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET, version="before")["version"])
        assert done["status"] == "succeeded", done["error"]
        busy = train(client, **LONG, version="busy")["version"]  # holds the only slot ...
        _running(client, busy)
        queued = train(client, dataset="mnist", layers=SMALL_NET, version="queued-before")["version"]
        assert client.get(f"/train/{queued}").json()["status"] == "queued"  # ... so this one waits

        proxy.refusing = True
        proxy.cut_all()
        outage = len(caplog.records)
        routes = [("GET", "/train", {}), ("GET", f"/train/{busy}", {}), ("GET", f"/train/{busy}/events", {}),
                  ("POST", "/train", {"json": {"dataset": "mnist", "layers": SMALL_NET}}), ("GET", "/models", {}),
                  ("GET", "/models/before", {}), ("GET", "/models/before/metadata", {}), ("GET", "/aliases", {})]
        for method, path, kwargs in routes:
            r = call(client, method, path, **kwargs)
            assert r.status_code == 503, (method, path, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/problem+json"
            assert int(r.headers["retry-after"]) > 0
            assert r.json()["title"] == "Catalog database unavailable"
        r = call(client, "GET", "/readyz")  # open to anyone: which dependency, never its host, port or user
        assert r.status_code == 503 and r.json()["dependency"] == "database"
        assert not {make_url(database_url).host, str(make_url(database_url).port), make_url(database_url).username
                    } & set(r.text.replace('"', " ").replace(":", " ").split())
        # Housekeeping (the reaper) meets the outage, says so, and keeps going; so does the pool (it runs the
        # queued job below).
        _logged(caplog, "housekeeping:", after=outage)
        alive = {t.name for t in threading.enumerate()}
        assert {"scv-housekeeping", "scv-pool"} <= alive

        proxy.heal()
        for method, path in [("GET", "/readyz"), ("GET", "/train"), ("GET", f"/train/{busy}"), ("GET", "/models"),
                             ("GET", "/models/before/metadata"), ("GET", "/aliases")]:
            r = call(client, method, path)
            assert r.status_code == 200, (method, path, r.status_code, r.text[:300])
        r = call(client, "GET", "/models/before")
        assert r.status_code == 200 and r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
        assert call(client, "DELETE", f"/train/{busy}").status_code == 200
        assert wait_for(client, busy)["status"] == "cancelled"
        # The job queued before the outage runs after it, in the same process.
        record = wait_for(client, queued)
        assert record["status"] == "succeeded", record["error"]
        bodies.append(client.get(f"/train/{queued}").text)
        r = call(client, "POST", "/train", json={"dataset": "mnist", "layers": SMALL_NET, "version": "after"})
        assert r.status_code == 202
        assert wait_for(client, "after")["status"] == "succeeded"
        assert {i["version"] for i in call(client, "GET", "/models").json()["items"]} == {"before", queued, "after"}

    assert not [b for b in bodies if PASSWORD in b]
    assert PASSWORD not in caplog.text


def test_a_database_that_stops_answering_is_503_within_15_s_and_the_service_recovers_by_itself(
        cut_database, seeded_settings, tmp_path):
    """The relay stops forwarding (a frozen primary, a stuck proxy: packets acknowledged, never answered)."""
    proxy, database_url = cut_database
    settings = seeded_settings.model_copy(update={
        "database_url": SecretStr(database_url), "minio_model_bucket": f"models-dbstall-{secrets.token_hex(4)}",
        "data_dir": tmp_path / "data", "max_concurrent_jobs": 0})
    routes = [("GET", "/train", {}), ("POST", "/train", {"json": {"dataset": "mnist", "layers": SMALL_NET}}),
              ("GET", "/models", {}), ("GET", "/readyz", {})]
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(len(routes)) as pool:
        assert client.get("/train").status_code == 200  # pooled connections exist: they stall too
        proxy.stalled = True
        # Every request at once, each given 15 s: a request still waiting then fails the test.
        answers = [pool.submit(client.request, method, path, **kwargs) for method, path, kwargs in routes]
        for (method, path, _), answer in zip(routes, answers, strict=True):
            r = answer.result(timeout=15)
            assert r.status_code == 503, (method, path, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0
        proxy.heal()
        for method, path, kwargs in routes:
            r = pool.submit(client.request, method, path, **kwargs).result(timeout=15)
            assert r.status_code in (200, 202), (method, path, r.status_code, r.text[:300])
        assert client.get("/train").json()["items"][0]["status"] == "queued"  # the job posted after recovery


def test_start_up_waits_for_a_database_that_is_still_starting(cut_database, caplog):
    """Compose and Kubernetes start the API beside PostgreSQL: a refused connection at start-up is waited for (with a
    log line), not a crash, and the migration runs once the database answers."""
    from app.db.engine import Database

    proxy, url = cut_database
    proxy.refusing = True
    db, done = Database(url), []
    migrating = threading.Thread(target=lambda: done.append(db.migrate(patience_s=60)))
    with caplog.at_level(logging.WARNING, logger="app.db.engine"):
        migrating.start()
        _logged(caplog, "retrying", after=0)
        assert migrating.is_alive() and not done
        proxy.refusing = False
        migrating.join(60)
    assert done == [None]
    assert PASSWORD not in caplog.text
    db.ping()
    db.dispose()
