"""Health, readiness, auth, problem+json and body limits through the real app on real S3."""

from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.s3 import buckets_exist, make_settings


def test_readyz_creates_both_buckets(client, settings, store):
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert buckets_exist(store, settings.minio_model_bucket, settings.minio_dataset_bucket)


def test_unknown_route_and_method_are_problem_json(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "no route matches GET /no/such/route"
    r = client.post("/healthz")
    assert r.status_code == 405 and r.json()["status"] == 405


def test_token_guards_everything_but_health(s3, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_API_TOKEN="s3cret-token-0123")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token-0123"}):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
            assert "s3cret-token-0123" not in r.text
        ok = c.get("/metrics", headers={"Authorization": "Bearer s3cret-token-0123"})
        assert ok.status_code == 200 and "scv_http_requests_total" in ok.text


def test_oversized_body_is_413(s3, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_MAX_BODY_BYTES=2048)
    with TestClient(create_app(settings)) as c:
        r = c.post("/healthz", content=b"x" * 5000)
        assert r.status_code == 413
        assert "SCV_MAX_BODY_BYTES" in r.json()["detail"]
