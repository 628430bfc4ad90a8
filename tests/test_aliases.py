"""Aliases through real HTTP: create, move, list, delete; `@alias` wherever a version goes; retention and delete."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import catalog
from tests.support.catalog import add_job, iso
from tests.support.registry import keys, listed, put_model
from tests.support.s3 import make_settings


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def two(client, settings, store):
    """Two stored models, `a` (older) and `b`, in the client's catalog."""
    now, db = datetime.now(UTC), client.app.state.db
    blobs = {v: put_model(store, settings.minio_model_bucket, v, db=db, created_at=iso(now - timedelta(minutes=m)))
             for v, m in (("a", 2), ("b", 1))}
    return blobs


def test_aliases_are_created_moved_listed_and_deleted(client, two):
    created = client.put("/aliases/production", json={"version": "a"})
    assert created.status_code == 200
    record = created.json()
    assert record["alias"] == "production" and record["version"] == "a"
    datetime.fromisoformat(record["updated_at"])
    assert client.get("/aliases/production").json() == record
    moved = client.put("/aliases/production", json={"version": "b"}).json()
    assert moved["version"] == "b" and moved["updated_at"] >= record["updated_at"]
    client.put("/aliases/mnist-best", json={"version": "b"})
    assert [(r["alias"], r["version"]) for r in client.get("/aliases").json()] == [
        ("mnist-best", "b"), ("production", "b")]
    items = {i["version"]: i for i in client.get("/models").json()["items"]}
    assert items["b"]["aliases"] == ["mnist-best", "production"] and items["a"]["aliases"] == []

    assert client.delete("/aliases/production").status_code == 204
    for method in ("GET", "DELETE"):
        r = client.request(method, "/aliases/production")
        assert r.status_code == 404 and "production" in r.json()["detail"], method
    assert client.get("/models/@production").status_code == 404
    assert [r["alias"] for r in client.get("/aliases").json()] == ["mnist-best"]


def test_bad_aliases_and_unknown_versions_are_refused_naming_them(client, two):
    r = client.put("/aliases/prod", json={"version": "never-trained"})
    assert r.status_code == 404 and "never-trained" in r.json()["detail"]
    for alias in ("..", ".hidden", "x" * 129, "a..b", "@prod"):
        r = client.put(f"/aliases/{alias}", json={"version": "a"})
        assert r.status_code in (404, 405, 422), alias  # some never reach the route (a path of its own)
        if r.status_code == 422:
            assert r.json()["field"] == "alias", alias
    for body in ({"version": "a/b"}, {"version": "x" * 129}, {}, {"version": "a", "extra": 1}):
        r = client.put("/aliases/prod", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", body
    add_job(client.app.state.db, "training", "running")
    assert client.put("/aliases/prod", json={"version": "training"}).status_code == 409
    assert client.get("/aliases").json() == []


def test_every_model_route_answers_for_the_model_an_alias_names_now(client, two):
    client.put("/aliases/prod", json={"version": "a"})
    r = client.get("/models/@prod")
    assert r.status_code == 200 and r.content == two["a"] and r.headers["x-scv-version"] == "a"
    assert r.headers["content-disposition"] == 'attachment; filename="a.safetensors"'
    head = client.head("/models/@prod")
    assert head.status_code == 200 and head.headers["x-scv-version"] == "a"
    part = client.get("/models/@prod", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == two["a"][:10] and part.headers["x-scv-version"] == "a"
    meta = client.get("/models/@prod/metadata")
    assert meta.json()["version"] == "a" and meta.headers["x-scv-version"] == "a"
    predicted = client.post("/models/@prod/predict", json={"images": [[[0] * 4] * 4]})
    assert predicted.status_code == 200 and predicted.headers["x-scv-version"] == "a"
    assert client.get("/models/b").headers["x-scv-version"] == "b"  # plain versions say so too

    client.put("/aliases/prod", json={"version": "b"})
    r = client.get("/models/@prod")
    assert r.content == two["b"] and r.headers["x-scv-version"] == "b"
    for path in ("/models/@nope", "/models/@nope/metadata"):
        r = client.get(path)
        assert r.status_code == 404 and "nope" in r.json()["detail"], path
    assert client.get("/models/@a..b").status_code == 422


def test_deleting_an_aliased_model_is_409_naming_its_aliases(client, settings, store, two):
    client.put("/aliases/prod", json={"version": "a"})
    client.put("/aliases/canary", json={"version": "a"})
    for path in ("/models/a", "/models/@prod"):
        r = client.delete(path)
        assert r.status_code == 409 and r.json()["aliases"] == ["canary", "prod"], path
        assert "'canary'" in r.json()["detail"] and "'prod'" in r.json()["detail"]
    assert len(keys(store, settings.minio_model_bucket, "a/")) == 2 and "a" in listed(client)
    client.put("/aliases/canary", json={"version": "b"})
    client.delete("/aliases/prod")
    assert client.delete("/models/a").status_code == 204
    assert keys(store, settings.minio_model_bucket, "a/") == []


def test_an_aliased_model_never_expires(s3, store, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_MODEL_TTL_DAYS="1")
    with TestClient(create_app(settings)) as client:
        db, bucket, now = client.app.state.db, settings.minio_model_bucket, datetime.now(UTC)
        for version in ("kept", "dropped"):
            put_model(store, bucket, version, db=db, created_at=iso(now - timedelta(days=3)))
        with db.write() as conn:  # aliased while it was young (PUT refuses a model already expired)
            catalog.put_alias(conn, "prod", "kept", updated_at=iso(now - timedelta(days=2)))
        registry = client.app.state.registry
        registry.finish_deletions()
        assert listed(client) == ["kept"]
        assert client.get("/models").json()["items"][0]["expires_at"] is None
        assert client.get("/models/@prod/metadata").json()["expires_at"] is None
        assert client.get("/models/kept").status_code == 200
        assert keys(store, bucket, "dropped/") == [] and len(keys(store, bucket, "kept/")) == 2

        assert client.delete("/aliases/prod").status_code == 204  # no alias: it has expired long ago
        r = client.get("/models/kept")
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        registry.finish_deletions()
        assert keys(store, bucket, "kept/") == [] and listed(client) == []
