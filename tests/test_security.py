"""Hostile IDs, planted pickles, size limits and secrets, through the real app on real S3."""

import io
import logging
import pickle

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from app.main import create_app
from tests.support.s3 import SECRET_KEY, make_settings
from tests.support.waiting import train, wait_for

HOSTILE = ["..", "..%2Fvictim", "%2E%2E%2Fvictim", "..%252Fvictim", "victim%2F..%2F..", "a%00b", "%00",
           "x" * 129, "%C3%A9t%C3%A9", ".victim", "victim..", "-victim", "%2Fvictim", "victim%5C..%5Cx"]
ROUTES = ["GET /train/{v}", "DELETE /train/{v}", "GET /train/{v}/events", "GET /models/{v}",
          "HEAD /models/{v}", "GET /models/{v}/metadata", "DELETE /models/{v}", "POST /models/{v}/predict",
          "GET /models/{v}/cka", "GET /models/{v}/activations?layer=0&sample=0",
          "GET /models/{v}/top-images?layer=0&channel=0&k=1"]


@pytest.fixture(scope="module")
def victim_client(seeded_settings):
    """An app with one real model, `victim`, that every hostile request must leave alone."""
    settings = seeded_settings.model_copy(update={"minio_model_bucket": "models-security"})
    with TestClient(create_app(settings)) as client:
        wait_for(client, train(client, dataset="mnist", version="victim", layers=[{"type": "Flatten"}])["version"])
        yield client


def _keys(client) -> list[tuple[str, str]]:
    settings = client.app.state.settings
    return sorted((o.key, o.etag) for o in client.app.state.store.list(bucket=settings.minio_model_bucket))


@pytest.mark.parametrize("route", ROUTES)
def test_hostile_versions_never_touch_storage(victim_client, route):
    before = _keys(victim_client)
    method, path = route.split(" ")
    for version in HOSTILE:
        r = victim_client.request(method, path.replace("{v}", version), json={"images": [[[0]]]})
        assert r.status_code in (404, 405, 422), (route, version, r.status_code)
        if method != "HEAD":
            assert r.headers["content-type"] == "application/problem+json"
    assert _keys(victim_client) == before
    assert victim_client.get("/models/victim/metadata").json()["version"] == "victim"


class _Exploit:
    """A pickle payload that would leave a marker file if anything ever unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickled(marker, *, torch_zip: bool) -> bytes:
    if not torch_zip:
        return pickle.dumps(_Exploit(marker))
    buffer = io.BytesIO()
    torch.save({"x": _Exploit(marker)}, buffer)  # what the prototype stored: a torch.save zip of pickles
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["train.safetensors", "cka.safetensors"])
def test_planted_pickle_dataset_object_is_refused(s3, seeded_settings, tmp_path, name):
    """A dataset object replaced by a pickle (or a torch.save zip) is refused by checksum, never loaded."""
    marker = tmp_path / "pwned"
    with TestClient(create_app(make_settings(s3, tmp_path))) as client:
        store, bucket = client.app.state.store, client.app.state.settings.minio_dataset_bucket
        for key in ("manifest.json", "train.safetensors", "test.safetensors", "cka.safetensors"):
            data = store.get_bytes(bucket=seeded_settings.minio_dataset_bucket, key=f"mnist/{key}")
            store.put(bucket=bucket, key=f"mnist/{key}", data=data)
        store.put(bucket=bucket, key=f"mnist/{name}", data=_pickled(marker, torch_zip=name == "cka.safetensors"))

        if name == "cka.safetensors":
            r = client.get("/datasets/mnist/cka?format=json")
            assert r.status_code == 502 and "mnist" in r.json()["detail"]
            assert "scv datasets seed mnist --force" in r.json()["detail"]
        else:
            record = wait_for(client, train(client, dataset="mnist", layers=[{"type": "Flatten"}])["version"])
            assert record["status"] == "failed" and "train.safetensors" in record["error"]
    assert not marker.exists()


def test_oversized_images_are_refused(victim_client):
    big = io.BytesIO()
    Image.new("L", (6000, 6000)).save(big, format="PNG")  # 36 Mpx: a decompression bomb in a small file
    r = victim_client.post("/models/victim/predict", files={"files": ("bomb.png", big.getvalue(), "image/png")})
    assert r.status_code in (413, 422) and r.headers["content-type"] == "application/problem+json"
    wrong = io.BytesIO()
    Image.new("L", (32, 32)).save(wrong, format="PNG")
    r = victim_client.post("/models/victim/predict", files={"files": ("x.png", wrong.getvalue(), "image/png")})
    assert r.status_code == 422 and "28" in r.json()["detail"]


def test_secrets_never_reach_logs_or_responses(s3, seeded_settings, tmp_path, caplog):
    token = "tok-" + "7" * 24
    settings = seeded_settings.model_copy(update={"minio_model_bucket": "models-secrets",
                                                  "api_token": SecretStr(token)})
    wrong = make_settings(s3, tmp_path, MINIO_SECRET_KEY="wrong-" + "9" * 20)
    bodies = []
    with caplog.at_level(logging.DEBUG):
        with TestClient(create_app(settings)) as client:
            auth = {"Authorization": f"Bearer {token}"}
            version = train(TestClient(client.app, headers=auth), dataset="mnist", layers=[{"type": "Flatten"}])
            wait_for(TestClient(client.app, headers=auth), version["version"])
            for path in ("/readyz", "/metrics", "/train", "/models", f"/train/{version['version']}", "/nope",
                         "/datasets/mnist"):
                bodies += [client.get(path).text, client.get(path, headers=auth).text]
            bodies.append(client.get("/openapi.json", headers=auth).text)
        with TestClient(create_app(wrong)) as client:
            bodies += [client.get("/readyz").text, client.post("/train", json={"dataset": "mnist"}).text]
    text = "\n".join(bodies) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (token, SECRET_KEY, "wrong-" + "9" * 20):
        assert secret not in text
    assert "storage" in text.lower()  # the failures were logged and answered, just without secrets


def test_a_tampered_manifest_cannot_name_a_cache_path(s3, seeded_settings, tmp_path):
    with TestClient(create_app(make_settings(s3, tmp_path))) as client:
        store, bucket = client.app.state.store, client.app.state.settings.minio_dataset_bucket
        for key in ("manifest.json", "cka.safetensors"):
            data = store.get_bytes(bucket=seeded_settings.minio_dataset_bucket, key=f"mnist/{key}")
            store.put(bucket=bucket, key=f"mnist/{key}", data=data)
        manifest = store.get_json(bucket=bucket, key="mnist/manifest.json")
        manifest["sha256"]["cka.safetensors"] = "../../escaped"
        store.put_json(bucket=bucket, key="mnist/manifest.json", value=manifest)
        r = client.get("/datasets/mnist/cka")
        assert r.status_code == 502 and "checksum" in r.json()["detail"]
    assert not list(tmp_path.rglob("escaped*"))
