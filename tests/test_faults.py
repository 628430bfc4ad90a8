"""Storage faults while the service works: clear errors, nothing partial, recovery without a restart.

The S3 server is real; a TCP proxy in front of it (tests/faultproxy.py) drops, stalls or refuses
connections on demand, the one fault a healthy real server cannot produce when asked.
"""

import secrets

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.faultproxy import FaultProxy
from tests.jobwait import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]


def _through(proxy: FaultProxy, seeded_settings, tmp_path):
    """The seeded settings, reaching S3 only through `proxy`, with their own model bucket and a cold cache."""
    return seeded_settings.model_copy(update={
        "minio_endpoint": proxy.endpoint, "minio_model_bucket": f"models-faults-{secrets.token_hex(4)}",
        "data_dir": tmp_path / "data", "storage_timeout_s": 2.0})


@pytest.fixture
def proxied(s3, seeded_settings, tmp_path):
    """An app that reaches the seeded S3 server only through a fault proxy, with a cold dataset cache."""
    proxy = FaultProxy(s3.endpoint)
    with TestClient(create_app(_through(proxy, seeded_settings, tmp_path))) as client:
        yield client, proxy
    proxy.close()


def _versions(client) -> set[str]:
    return {item["version"] for item in client.get("/models").json()["items"]}


def test_dataset_download_fault_fails_the_job_then_recovers(proxied):
    client, proxy = proxied
    # The request line only: the job record that reports the failure names the object too.
    proxy.drop_patterns.add(f"GET /{client.app.state.settings.minio_dataset_bucket}/mnist/train.safetensors".encode())
    record = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"])
    assert record["status"] == "failed"
    assert "mnist/train.safetensors" in record["error"] and "S3 server" in record["error"]
    assert proxy.dropped >= 1

    proxy.heal()
    retry = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"])
    assert retry["status"] == "succeeded", retry["error"]
    assert _versions(client) == {retry["version"]}


def test_model_upload_fault_fails_the_job_and_lists_nothing_partial(proxied):
    client, proxy = proxied
    bucket = client.app.state.settings.minio_model_bucket
    proxy.drop_patterns.add(f"PUT /{bucket}/upload-fault/model.safetensors".encode())
    record = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET, version="upload-fault")["version"])
    assert record["status"] == "failed"
    assert "upload-fault/model.safetensors" in record["error"]
    assert "upload-fault" not in _versions(client)
    r = client.get("/models/upload-fault")
    assert r.status_code in (404, 409) and r.headers["content-type"] == "application/problem+json"
    keys = [o.key for o in client.app.state.store.list(bucket=bucket, prefix="upload-fault/")]
    assert keys == ["upload-fault/job.json"]

    proxy.heal()
    retry = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET, version="upload-ok")["version"])
    assert retry["status"] == "succeeded"
    assert _versions(client) == {"upload-ok"}


@pytest.mark.parametrize("fault", ["refusing", "stalled"])
def test_listing_during_an_outage_is_503_then_recovers(proxied, fault):
    client, proxy = proxied
    done = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"])
    assert done["status"] == "succeeded"
    setattr(proxy, fault, True)
    proxy.cut_all()
    for path in ("/models", "/train", "/datasets", "/datasets/mnist/cka"):
        r = client.get(path)
        assert r.status_code == 503, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/problem+json"
        assert "retry-after" in r.headers
    assert client.get("/readyz").status_code == 503
    proxy.heal()
    assert client.get("/readyz").status_code == 200
    assert _versions(client) == {done["version"]}


def test_queued_job_runs_when_storage_returns_after_a_restart(s3, seeded_settings, tmp_path):
    """A job queued by a previous run of the service runs even when storage is down at start-up."""
    proxy = FaultProxy(s3.endpoint)
    settings = _through(proxy, seeded_settings, tmp_path)
    with TestClient(create_app(settings)) as first:
        version = train(first, dataset="mnist", layers=SMALL_NET, version="left-queued")["version"]
        wait_for(first, version)
        # Rewind it to `queued`, as if the previous process had stopped before running it.
        store = first.app.state.store
        record = store.get_json(bucket=settings.minio_model_bucket, key=f"{version}/job.json")
        store.delete_prefix(bucket=settings.minio_model_bucket, prefix=f"{version}/")
        store.put_json(bucket=settings.minio_model_bucket, key=f"{version}/job.json",
                       value={**record, "status": "queued", "metrics": None, "history": [], "finished_at": None})
    proxy.refusing = True
    try:
        with TestClient(create_app(settings)) as second:
            assert second.get("/readyz").status_code == 503
            proxy.heal()
            assert wait_for(second, version, timeout=60)["status"] == "succeeded"
    finally:
        proxy.close()


def test_stray_and_malformed_records_do_not_break_job_listing(proxied):
    client, _ = proxied
    store, bucket = client.app.state.store, client.app.state.settings.minio_model_bucket
    done = wait_for(client, train(client, dataset="mnist", layers=SMALL_NET)["version"])
    store.put(bucket=bucket, key="not a version/job.json", data=b"{}")
    store.put(bucket=bucket, key="broken/job.json", data=b"{not json")
    assert [j["version"] for j in client.get("/train").json()] == [done["version"]]
    r = client.get("/train/broken")
    assert r.status_code == 502 and "malformed" in r.json()["detail"]
