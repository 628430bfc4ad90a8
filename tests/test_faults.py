"""Storage faults while the service works: jobs given back and retried, nothing partial, recovery without a restart.

The S3 server is real; a TCP proxy in front of it (tests/support/faultproxy.py) drops, stalls or refuses
connections on demand, the one fault a healthy real server cannot produce when asked. Job records and
listings live in the catalog database, which stays up here (tests/test_database_faults.py cuts it).
"""

import hashlib
import secrets
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]


def _through(proxy: FaultProxy, seeded_settings, tmp_path, **overrides):
    """The seeded settings, reaching S3 only through `proxy`, with their own model bucket, catalog and cold cache."""
    return seeded_settings.model_copy(update={
        "minio_endpoint": proxy.endpoint, "minio_model_bucket": f"models-faults-{secrets.token_hex(4)}",
        "data_dir": tmp_path / "data", "storage_timeout_s": 2.0, **overrides})


@pytest.fixture
def proxy(s3):
    proxy = FaultProxy(s3.endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def max_attempts() -> int:
    """SCV_MAX_ATTEMPTS of the `proxied` app; a test parametrizes it to change it."""
    return 3


@pytest.fixture
def proxied(proxy, seeded_settings, tmp_path, max_attempts):
    """An app that reaches the seeded S3 server only through a fault proxy, with a cold dataset cache."""
    settings = _through(proxy, seeded_settings, tmp_path, max_attempts=max_attempts)
    with TestClient(create_app(settings)) as client:
        yield client, proxy


def _versions(client) -> set[str]:
    return {item["version"] for item in client.get("/models").json()["items"]}


def _intact(client, version: str) -> None:
    """The model downloads, and its bytes are the ones its ETag (sha256) promises."""
    r = client.get(f"/models/{version}")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'


def _given_back(client, version: str, *, timeout: float = 120.0) -> dict:
    """Wait until a first attempt of the job has ended without finishing it, and another has begun."""
    deadline = time.monotonic() + timeout
    while (record := client.get(f"/train/{version}").json())["attempts"] < 2:
        assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def _faults(client) -> dict[str, bytes]:
    """The request lines of a job's dataset download and model upload, to drop in the proxy."""
    settings = client.app.state.settings
    return {"dataset download": f"GET /{settings.minio_dataset_bucket}/mnist/train.safetensors".encode(),
            "model upload": f"PUT /{settings.minio_model_bucket}/faulty/model.safetensors".encode()}


# Attempts follow each other within a second or so: enough of them that one is still left when the test heals.
@pytest.mark.parametrize("max_attempts", [10])
@pytest.mark.parametrize("fault", ["dataset download", "model upload"])
def test_a_storage_fault_gives_the_job_back_and_a_later_attempt_succeeds(proxied, fault):
    client, proxy = proxied
    proxy.drop_patterns.add(_faults(client)[fault])
    version = train(client, dataset="mnist", layers=SMALL_NET, version="faulty")["version"]
    _given_back(client, version)
    assert proxy.dropped >= 1
    assert "faulty" not in _versions(client)
    assert client.get("/models/faulty").status_code == 409  # still training: not served

    proxy.heal()
    record = wait_for(client, version)
    assert record["status"] == "succeeded", record["error"]
    assert record["attempts"] >= 2 and record["error"] is None
    assert _versions(client) == {"faulty"}
    _intact(client, "faulty")


@pytest.mark.parametrize("max_attempts", [2])
@pytest.mark.parametrize("fault", ["dataset download", "model upload"])
def test_a_lasting_storage_fault_fails_the_job_after_max_attempts_and_lists_nothing(proxied, fault):
    client, proxy = proxied
    proxy.drop_patterns.add(_faults(client)[fault])
    record = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET, version="faulty")["version"])
    assert record["status"] == "failed" and record["attempts"] == 2
    # The reason names what failed and why the job was not tried again.
    obj = "mnist/train.safetensors" if fault == "dataset download" else "faulty/model.safetensors"
    assert obj in record["error"] and "S3 server" in record["error"] and "SCV_MAX_ATTEMPTS" in record["error"]
    assert "faulty" not in _versions(client)
    r = client.get("/models/faulty")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "ended failed" in r.json()["detail"]
    store, bucket = client.app.state.store, client.app.state.settings.minio_model_bucket
    assert "faulty/model.safetensors" not in {o.key for o in store.list(bucket=bucket, prefix="faulty/")}

    proxy.heal()
    retry = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET, version="healed")["version"])
    assert retry["status"] == "succeeded" and retry["attempts"] == 1, retry["error"]
    assert _versions(client) == {"healed"}
    _intact(client, "healed")


@pytest.mark.parametrize("fault", ["refusing", "stalled"])
def test_during_a_storage_outage_listings_answer_from_the_catalog_and_bytes_are_503(proxied, fault):
    client, proxy = proxied
    done = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"])
    assert done["status"] == "succeeded"
    setattr(proxy, fault, True)
    proxy.cut_all()

    # What the catalog knows stays available: a user can still see their jobs and models.
    assert [j["version"] for j in client.get("/train").json()["items"]] == [done["version"]]
    assert client.get(f"/train/{done['version']}").json()["status"] == "succeeded"
    assert _versions(client) == {done["version"]}
    assert client.get(f"/models/{done['version']}/metadata").json()["version"] == done["version"]
    # What needs the bytes says so, and when to come back.
    for path in (f"/models/{done['version']}", "/datasets", "/datasets/mnist/cka"):
        r = client.get(path)
        assert r.status_code == 503, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) > 0
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["dependency"] == "storage"
    assert proxy.endpoint not in r.text and proxy.endpoint.split(":")[1] not in r.text  # open to anyone: no address

    proxy.heal()
    assert client.get("/readyz").status_code == 200
    _intact(client, done["version"])
    assert client.get("/datasets/mnist/cka").status_code == 200


def test_queued_job_runs_when_storage_returns_after_a_restart(proxy, seeded_settings, tmp_path):
    """A job queued by an earlier process runs in a new one that starts while storage is down."""
    settings = _through(proxy, seeded_settings, tmp_path, max_attempts=10)
    with TestClient(create_app(settings.model_copy(update={"max_concurrent_jobs": 0}))) as api_only:
        version = train(api_only, dataset="mnist", layers=SMALL_NET, version="left-queued")["version"]
        assert api_only.get(f"/train/{version}").json()["status"] == "queued"
    proxy.refusing = True
    with TestClient(create_app(settings)) as second:
        assert second.get("/readyz").status_code == 503
        proxy.heal()
        record = wait_for(second, version)
        assert record["status"] == "succeeded", record["error"]
        _intact(second, version)


def test_stray_objects_in_the_bucket_do_not_reach_the_listings(proxied):
    client, _ = proxied
    store, bucket = client.app.state.store, client.app.state.settings.minio_model_bucket
    store.put(bucket=bucket, key="not a version/job.json", data=b"{}")
    store.put(bucket=bucket, key="broken/job.json", data=b"{not json")
    store.put(bucket=bucket, key="broken/metadata.json", data=b"{not json")
    assert client.get("/train").json() == {"items": [], "next": None}
    assert client.get("/models").json() == {"items": [], "next": None}
    assert client.get("/train/broken").status_code == 404
    assert client.get("/models/broken").status_code == 404
