"""The model registry through real HTTP: pages, downloads (ETag, Range, 304, HEAD; from the local cache), metadata,
delete, expiry."""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest
import torch
from fastapi.testclient import TestClient

from app.datasets.service import DatasetService
from app.errors import StorageUnavailable
from app.main import create_app
from app.registry.service import ModelRegistry
from app.storage.cache import LocalCache
from app.storage.s3 import Store
from tests.support.catalog import add_job, iso
from tests.support.registry import keys, listed, put_model, settle
from tests.support.s3 import make_settings
from tests.support.waiting import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]


@pytest.fixture(scope="module")
def trained(seeded_client, seeded_settings):
    """One real model trained through POST /train on the seeded tiny MNIST."""
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, batch_size=16)["version"]
    assert wait_for(seeded_client, version)["status"] == "succeeded"
    return version


def test_download_is_byte_identical_with_etag_ranges_304_and_head(seeded_client, seeded_settings, store, trained):
    stored = store.get_bytes(bucket=seeded_settings.minio_model_bucket, key=f"{trained}/model.safetensors")
    r = seeded_client.get(f"/models/{trained}")
    assert r.status_code == 200 and r.content == stored
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["content-length"] == str(len(stored))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{trained}.safetensors"'
    assert r.headers["accept-ranges"] == "bytes"
    listed = {i["version"]: i for i in seeded_client.get("/models", params={"limit": 1000}).json()["items"]}
    assert listed[trained]["sha256"] == digest and listed[trained]["size_bytes"] == len(stored)

    part = seeded_client.get(f"/models/{trained}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == stored[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(stored)}"
    assert part.headers["content-length"] == "100"
    assert seeded_client.get(f"/models/{trained}", headers={"Range": "bytes=-10"}).content == stored[-10:]
    tail = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes={len(stored) - 5}-"})
    assert tail.status_code == 206 and tail.content == stored[-5:]
    assert tail.headers["content-range"] == f"bytes {len(stored) - 5}-{len(stored) - 1}/{len(stored)}"
    assert tail.headers["content-length"] == "5"
    clamped = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes=10-{len(stored) * 2}"})
    assert clamped.status_code == 206 and clamped.content == stored[10:]
    assert clamped.headers["content-range"] == f"bytes 10-{len(stored) - 1}/{len(stored)}"
    beyond = seeded_client.get(f"/models/{trained}", headers={"Range": f"bytes={len(stored)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(stored)}"
    assert beyond.headers["content-type"] == "application/problem+json"
    several_ranges(seeded_client, trained, stored)

    same = seeded_client.get(f"/models/{trained}", headers={"If-None-Match": r.headers["etag"]})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == r.headers["etag"]
    other = seeded_client.get(f"/models/{trained}", headers={"If-None-Match": '"0000"'})
    assert other.status_code == 200 and other.content == stored

    head = seeded_client.head(f"/models/{trained}")
    assert head.status_code == 200 and head.content == b""
    assert {k: head.headers[k] for k in ("etag", "content-length", "content-disposition")} == {
        k: r.headers[k] for k in ("etag", "content-length", "content-disposition")}


def test_metadata_describes_the_training(seeded_client, trained):
    r = seeded_client.get(f"/models/{trained}/metadata")
    assert r.status_code == 200
    meta = r.json()
    job = seeded_client.get(f"/train/{trained}").json()
    assert meta["version"] == trained and meta["dataset"] == "mnist"
    assert meta["request"] == job["request"] and meta["layers"] == job["layers"]
    assert meta["metrics"] == job["metrics"] and meta["history"] == job["history"]
    assert len(meta["classes"]) == 10 and len(meta["normalization"]["mean"]) == 1
    assert set(meta["libraries"]) >= {"torch", "safetensors"}
    assert meta["sha256"] == seeded_client.get(f"/models/{trained}").headers["etag"].strip('"')
    assert meta["expires_at"] is None
    assert meta["reproducible"] is True and meta["nondeterministic"] == []  # a CPU run always repeats


def test_models_in_training_are_409_and_deleting_a_cancelled_job_leaves_nothing(seeded_client, seeded_settings,
                                                                                store):
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, epochs=100, batch_size=1)["version"]
    wait_for(seeded_client, version, {"running"})
    for method, path in (("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", "")):
        r = seeded_client.request(method, f"/models/{version}{path}")
        assert r.status_code == 409, (method, path)
        if method != "HEAD":
            assert r.json()["job"] == f"/train/{version}" and r.headers["content-type"] == "application/problem+json"
    seeded_client.delete(f"/train/{version}")
    assert wait_for(seeded_client, version)["status"] == "cancelled"
    r = seeded_client.get(f"/models/{version}")
    assert r.status_code == 404 and "cancelled" in r.json()["detail"]
    assert seeded_client.delete(f"/models/{version}").status_code == 204
    assert keys(store, seeded_settings.minio_model_bucket, f"{version}/") == []
    assert seeded_client.get(f"/train/{version}").status_code == 404


def test_delete_removes_every_object_and_the_model_is_gone(client, settings, store):
    bucket, db = settings.minio_model_bucket, client.app.state.db
    put_model(store, bucket, "doomed", db=db, labels={"owner": "alice"})
    put_model(store, bucket, "doomed-2", db=db)  # shares the name's start: must survive
    assert client.get("/train/doomed").status_code == 200
    assert client.get("/models/doomed").status_code == 200
    assert client.delete("/models/doomed").status_code == 204
    assert keys(store, bucket, "doomed/") == []
    assert [i["version"] for i in client.get("/models").json()["items"]] == ["doomed-2"]
    assert client.get("/models", params={"label": "owner:alice"}).json()["items"] == []
    for path in ("/models/doomed", "/models/doomed/metadata", "/train/doomed"):
        assert client.get(path).status_code == 404, path
    assert client.post("/models/doomed/predict", json={"images": [[[0] * 4] * 4]}).status_code == 404
    assert client.delete("/models/doomed").status_code == 404
    assert len(keys(store, bucket, "doomed-2/")) == 2


def test_objects_without_catalog_rows_can_still_be_deleted(client, settings, store):
    bucket = settings.minio_model_bucket
    put_model(store, bucket, "leftover")  # objects only: never listed, never served
    assert client.get("/models/leftover").status_code == 404
    assert client.delete("/models/leftover").status_code == 204
    assert keys(store, bucket, "leftover/") == []


class FailingOnce(Store):
    """The session's S3 server, except that the first prefix delete fails as if storage went away."""

    failures = 1

    def delete_prefix(self, *, bucket: str, prefix: str) -> int:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("S3 server is unreachable (injected)")
        return super().delete_prefix(bucket=bucket, prefix=prefix)


def test_an_interrupted_delete_is_finished_later_and_never_listed_meanwhile(client, settings, store, s3):
    bucket, db = settings.minio_model_bucket, client.app.state.db
    put_model(store, bucket, "halfway", db=db)
    put_model(store, bucket, "other", db=db)
    failing = FailingOnce(endpoint=s3.endpoint, access_key=settings.minio_access_key,
                          secret_key=settings.minio_secret_key.get_secret_value())
    replica = ModelRegistry(store=failing, settings=settings, db=db)  # another process, whose storage fails
    with pytest.raises(StorageUnavailable):
        replica.delete("halfway")
    assert len(keys(store, bucket, "halfway/")) == 2  # the objects are still there ...
    assert listed(client) == ["other"]  # ... but the model is neither listed
    for path in ("/models/halfway", "/models/halfway/metadata", "/train/halfway"):
        assert client.get(path).status_code == 404, path  # ... nor served
    assert client.put("/aliases/late", json={"version": "halfway"}).status_code == 404
    assert replica.finish_deletions() == 1  # the housekeeping of any process finishes it
    assert keys(store, bucket, "halfway/") == []
    assert replica.finish_deletions() == 0
    assert listed(client) == ["other"] and len(keys(store, bucket, "other/")) == 2


def test_listing_pages_filters_and_sorts(client, settings, store):
    bucket, db, start = settings.minio_model_bucket, client.app.state.db, datetime(2026, 1, 1, tzinfo=UTC)
    made = {f"m{i:02d}": ("mnist" if i % 3 else "cifar10", iso(start + timedelta(minutes=i % 7, seconds=i)),
                          round(0.1 + (i * 7 % 11) / 20, 3)) for i in range(11)}
    for version, (dataset, created, accuracy) in made.items():
        put_model(store, bucket, version, db=db, dataset=dataset, created_at=created, accuracy=accuracy,
                  labels={"owner": "alice" if int(version[1:]) % 2 else "bob"})
    add_job(db, "queued-1", "queued")  # no model yet: not listed
    newest_first = sorted(made, key=lambda v: (made[v][1], v), reverse=True)

    def pages(**params) -> tuple[list[str], int]:
        seen, cursor, count = [], None, 0
        while True:
            body = client.get("/models", params={**params, **({"cursor": cursor} if cursor else {})}).json()
            seen += [i["version"] for i in body["items"]]
            count, cursor = count + 1, body["next"]
            if cursor is None:
                return seen, count

    assert pages(limit=4) == (newest_first, 3)
    assert pages(limit=4, sort="test_accuracy")[0] == sorted(made, key=lambda v: (made[v][2], v), reverse=True)
    item = client.get("/models", params={"limit": 1}).json()["items"][0]
    assert set(item) == {"version", "dataset", "created_at", "size_bytes", "sha256", "test_accuracy", "epochs",
                         "num_parameters", "expires_at", "labels", "aliases"}
    assert item["labels"] == {"owner": "bob" if int(item["version"][1:]) % 2 == 0 else "alice"}
    cifar = client.get("/models", params={"dataset": "cifar10"}).json()
    assert [i["version"] for i in cifar["items"]] == [v for v in newest_first if made[v][0] == "cifar10"]
    assert cifar["next"] is None
    alice_cifar = pages(limit=1, dataset="cifar10", label="owner:alice")[0]
    assert alice_cifar == [v for v in newest_first if made[v][0] == "cifar10" and int(v[1:]) % 2]
    first = client.get("/models", params={"limit": 2}).json()["next"]
    for bad, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"),
                       ({"cursor": first[:-2] + "xx"}, "cursor"), ({"cursor": first, "sort": "test_accuracy"},
                                                                   "cursor"),
                       ({"label": "owner"}, "label"), ({"label": "Owner:x"}, "label"),
                       ({"label": "owner:" + "x" * 129}, "label"), ({"sort": "size"}, "sort")):
        r = client.get("/models", params=bad)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", bad
        assert field in r.text, bad
    assert len(client.get("/models", params={"limit": 1000}).json()["items"]) == 11


def test_every_process_on_the_catalog_sees_the_same_models_at_once(client, settings, store):
    bucket, db, now = settings.minio_model_bucket, client.app.state.db, datetime.now(UTC)
    put_model(store, bucket, "first", db=db, created_at=iso(now - timedelta(minutes=2)))
    assert listed(client) == ["first"]
    with TestClient(create_app(settings)) as replica:  # another API process on the same catalog and bucket
        put_model(store, bucket, "second", db=replica.app.state.db, created_at=iso(now - timedelta(minutes=1)))
        assert listed(client) == listed(replica) == ["second", "first"]
        assert replica.delete("/models/first").status_code == 204
        assert client.get("/models/first").status_code == 404
        assert listed(client) == ["second"]
    with TestClient(create_app(settings)) as restarted:
        assert listed(restarted) == ["second"]


@pytest.mark.parametrize("path", ["..%2Fvictim", "a%2Fb", "x" * 129, "..", ".hidden", "%2E%2E%2Fvictim",
                                  "victim%2F..%2Fvictim", "..%2Fmetadata", "@..", "@", "@x%2F..%2Fvictim"])
def test_hostile_versions_are_refused_without_touching_other_models(client, settings, store, path):
    bucket = settings.minio_model_bucket
    put_model(store, bucket, "victim", db=client.app.state.db)
    for method, suffix in (("GET", ""), ("GET", "/metadata"), ("DELETE", ""), ("POST", "/predict")):
        r = client.request(method, f"/models/{path}{suffix}", json={"images": [[[0] * 4] * 4]})
        assert r.status_code in (404, 405, 422), (method, suffix, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
    assert len(keys(store, bucket, "victim/")) == 2 and listed(client) == ["victim"]


def test_unknown_model_is_404(client):
    for method, suffix in (("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", "")):
        r = client.request(method, f"/models/never-trained{suffix}")
        assert r.status_code == 404, (method, suffix)
    assert "never-trained" in client.get("/models/never-trained").json()["detail"]


def test_jobs_without_a_model_are_409_while_active_and_404_once_ended(settings):
    # API only (no slots): nothing claims the queued job while the test looks at it.
    with TestClient(create_app(settings.model_copy(update={"max_concurrent_jobs": 0}))) as client:
        _check_active_and_ended(client)


def _check_active_and_ended(client) -> None:
    db = client.app.state.db
    for status, code in (("queued", 409), ("running", 409), ("failed", 404), ("cancelled", 404)):
        add_job(db, f"job-{status}", status)
        for method, suffix in (("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", "")):
            r = client.request(method, f"/models/job-{status}{suffix}")
            assert r.status_code == (204 if method == "DELETE" and code == 404 else code), (status, method, suffix)
            if method != "HEAD" and r.status_code != 204:
                assert status in r.json()["detail"]


def test_expired_models_are_neither_listed_nor_served_and_are_removed(s3, store, tmp_path):
    settings = make_settings(s3, tmp_path, SCV_MODEL_TTL_DAYS="1")
    with TestClient(create_app(settings)) as client:
        bucket, now, db = settings.minio_model_bucket, datetime.now(UTC), client.app.state.db
        put_model(store, bucket, "old", db=db, created_at=iso(now - timedelta(days=2)))
        put_model(store, bucket, "fresh", db=db, created_at=iso(now - timedelta(hours=1)))
        items = client.get("/models").json()["items"]
        assert [i["version"] for i in items] == ["fresh"]
        assert items[0]["expires_at"] == iso(now - timedelta(hours=1) + timedelta(days=1))
        for suffix in ("", "/metadata"):
            r = client.get(f"/models/old{suffix}")
            assert r.status_code == 404 and "expired" in r.json()["detail"]
        assert client.get("/models/fresh/metadata").json()["expires_at"] == items[0]["expires_at"]
        assert client.put("/aliases/rescue", json={"version": "old"}).status_code == 404  # hidden means gone
        client.app.state.registry.finish_deletions()  # what each process's housekeeping does every few seconds
        assert keys(store, bucket, "old/") == [] and client.get("/train/old").status_code == 404
        assert len(keys(store, bucket, "fresh/")) == 2


def test_a_refused_lifecycle_call_is_not_a_failed_start(s3, store, tmp_path, monkeypatch):
    # SeaweedFS accepts lifecycle calls; a server that refuses them is simulated here.
    def refuse(self, *, bucket):
        raise StorageUnavailable("lifecycle is not implemented")

    monkeypatch.setattr(Store, "clear_expiry", refuse)
    settings = make_settings(s3, tmp_path, SCV_MODEL_TTL_DAYS="3")
    with TestClient(create_app(settings)) as client:
        put_model(store, settings.minio_model_bucket, "kept", db=client.app.state.db, created_at=iso(datetime.now(UTC)))
        assert listed(client) == ["kept"]


def test_registry_load_returns_the_network_and_its_metadata(client, settings, store):
    put_model(store, settings.minio_model_bucket, "loadable", db=client.app.state.db)
    net, meta = client.app.state.registry.load("loadable")
    assert isinstance(net, torch.nn.Sequential) and not net.training
    assert meta["classes"] == ["a", "b", "c"] and meta["input_shape"] == [1, 4, 4]
    assert client.app.state.registry.load("loadable")[0] is net  # the in-process LRU


# -- downloads through the local cache -------------------------------------------------------------------------


def cache_of(client) -> LocalCache:
    """The app's local cache once the background fills queued by its downloads so far have ended."""
    settle(client.app.state.registry, 60)
    return client.app.state.registry.cache


def ranged_suite(client, version: str, stored: bytes) -> None:
    """Byte-identical whole file, one range, a suffix, 304, HEAD, 416, several ranges, and ranges ignored."""
    size, etag = len(stored), f'"{hashlib.sha256(stored).hexdigest()}"'
    whole = client.get(f"/models/{version}")
    assert whole.status_code == 200 and whole.content == stored and whole.headers["etag"] == etag
    assert whole.headers["content-length"] == str(size) and whole.headers["x-scv-version"] == version
    assert whole.headers["content-disposition"] == f'attachment; filename="{version}.safetensors"'
    part = client.get(f"/models/{version}", headers={"Range": "bytes=7-300"})
    assert part.status_code == 206 and part.content == stored[7:301]
    assert part.headers["content-range"] == f"bytes 7-300/{size}" and part.headers["content-length"] == "294"
    assert client.get(f"/models/{version}", headers={"Range": "bytes=-9"}).content == stored[-9:]
    stale = client.get(f"/models/{version}", headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == stored  # If-Range with another ETag: the whole file
    same = client.get(f"/models/{version}", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    head = client.head(f"/models/{version}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)
    beyond = client.get(f"/models/{version}", headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/problem+json"
    assert beyond.headers["content-range"] == f"bytes */{size}"
    several_ranges(client, version, stored)
    for ignored in ("bytes=x-y", "items=0-9", "bytes=9-2"):  # RFC 9110: a Range the server cannot use is ignored
        r = client.get(f"/models/{version}", headers={"Range": ignored})
        assert r.status_code == 200 and r.content == stored, ignored


def several_ranges(client, version: str, stored: bytes) -> None:
    """Two ranges: one 206 of multipart/byteranges holding each part."""
    r = client.get(f"/models/{version}", headers={"Range": "bytes=0-1,5-9"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges; boundary=")
    for first, last in ((0, 1), (5, 9)):
        part = f"Content-Range: bytes {first}-{last}/{len(stored)}\r\n\r\n".encode() + stored[first:last + 1]
        assert part + b"\r\n--" in r.content


@pytest.fixture
def small_chunks(monkeypatch):
    """Downloads in pieces of 256 bytes, so a small model file takes several (held back, verified last)."""
    monkeypatch.setattr("app.registry.files.CHUNK_BYTES", 256)


def test_a_repeat_download_is_served_from_the_cache_exactly_as_from_storage(client, settings, store, small_chunks):
    bucket, db = settings.minio_model_bucket, client.app.state.db
    stored = put_model(store, bucket, "cached", db=db)
    sha = hashlib.sha256(stored).hexdigest()
    ranged_suite(client, "cached", stored)  # the first GET streams from storage and fills the cache
    assert cache_of(client).path(sha).read_bytes() == stored
    store.delete(bucket=bucket, key="cached/model.safetensors")  # from now on only the cache can answer
    ranged_suite(client, "cached", stored)
    assert client.get("/models/@nope").status_code == 404
    assert client.put("/aliases/prod", json={"version": "cached"}).status_code == 200
    assert client.get("/models/@prod").content == stored


def test_the_cache_survives_a_restart(s3, store, tmp_path):
    settings = make_settings(s3, tmp_path)
    with TestClient(create_app(settings)) as client:
        stored = put_model(store, settings.minio_model_bucket, "kept", db=client.app.state.db)
        assert client.get("/models/kept").content == stored
        assert len(cache_of(client).entries()) == 1
    store.delete(bucket=settings.minio_model_bucket, key="kept/model.safetensors")
    with TestClient(create_app(settings)) as restarted:  # a new process on the same SCV_DATA_DIR
        ranged_suite(restarted, "kept", stored)
        r = restarted.post("/models/kept/predict", json={"images": [[[0] * 4] * 4]})  # load() reads the cache too
        assert r.status_code == 200 and r.json()["predictions"][0]["class"] in ("a", "b", "c")


def test_a_cached_file_damaged_on_disk_is_fetched_and_verified_again(client, settings, store, small_chunks):
    bucket = settings.minio_model_bucket
    stored = put_model(store, bucket, "damaged", db=client.app.state.db)
    assert client.get("/models/damaged").content == stored
    path = cache_of(client).path(hashlib.sha256(stored).hexdigest())
    with open(path, "r+b") as file:  # a byte flipped in place: same name, same size
        file.seek(len(stored) // 2)
        file.write(bytes([stored[len(stored) // 2] ^ 0xFF]))
    r = client.get("/models/damaged")
    assert r.status_code == 200 and r.content == stored  # from storage, not from the damaged file
    assert cache_of(client).path(path.stem).read_bytes() == stored  # and the cache holds the verified copy again

    with open(path, "r+b") as file:
        file.write(b"\0")
    store.delete(bucket=bucket, key="damaged/model.safetensors")  # now nothing can serve the right bytes
    r = client.get("/models/damaged")
    assert r.status_code != 200 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/models/damaged", headers={"Range": "bytes=0-9"}).status_code != 206
    assert client.post("/models/damaged/predict", json={"images": [[[0] * 4] * 4]}).status_code != 200


def test_storage_bytes_that_differ_from_the_catalog_are_never_cached_and_then_never_served_whole(
        client, settings, store, small_chunks, caplog):
    put_model(store, settings.minio_model_bucket, "lying", db=client.app.state.db,
              sha256=hashlib.sha256(b"other bytes").hexdigest())
    first = client.get("/models/lying")  # from storage as it comes: the ETag (the catalog's sha256) tells a client
    assert first.status_code == 200 and first.headers["etag"] != f'"{hashlib.sha256(first.content).hexdigest()}"'
    assert cache_of(client).entries() == []  # the background fill verified it and kept nothing
    assert "catalog records" in caplog.text and "verified on the way" in caplog.text
    other = TestClient(client.app, raise_server_exceptions=False)  # the same app, its lifespan already running
    cut = other.get("/models/lying")  # from now on the last piece is never sent: the body stops short
    assert cut.status_code == 200 and len(cut.content) < int(cut.headers["content-length"])
    ranged = other.get("/models/lying", headers={"Range": "bytes=0-9"})  # fetched whole, verified, refused
    assert ranged.status_code == 502 and ranged.headers["content-type"] == "application/problem+json"
    assert cache_of(client).entries() == []


def test_a_range_of_an_uncached_model_is_fetched_into_the_cache_verified_and_a_head_reads_nothing(
        client, settings, store):
    bucket = settings.minio_model_bucket
    stored = put_model(store, bucket, "partial", db=client.app.state.db)
    head = client.head("/models/partial")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(stored))
    assert head.headers["accept-ranges"] == "bytes" and cache_of(client).entries() == []
    part = client.get("/models/partial", headers={"Range": "bytes=5-20"})
    assert part.status_code == 206 and part.content == stored[5:21]
    assert cache_of(client).path(hashlib.sha256(stored).hexdigest()).read_bytes() == stored
    store.delete(bucket=bucket, key="partial/model.safetensors")  # from now on only the cache can answer
    assert client.get("/models/partial").content == stored


def test_models_and_datasets_share_one_bounded_cache(seeded_settings, store, tmp_path):
    cka = DatasetService(store=store, settings=seeded_settings).manifest("mnist")
    cka_sha, cka_size = cka["sha256"]["cka.safetensors"], cka["sizes"]["cka.safetensors"]
    settings = seeded_settings.model_copy(update={  # the seeded datasets; its own catalog, model bucket and cache
        "data_dir": tmp_path, "cache_max_bytes": cka_size + 100,
        "minio_model_bucket": f"models-{secrets.token_hex(4)}"})
    with TestClient(create_app(settings)) as client:
        cache = cache_of(client)
        assert client.get("/datasets/mnist/cka").status_code == 200
        assert [name for _, name, _ in cache.entries()] == [f"{cka_sha}.safetensors"]
        stored = put_model(store, settings.minio_model_bucket, "shared", db=client.app.state.db)
        assert len(stored) <= cache.max_bytes < len(stored) + cka_size  # either fits, not both
        assert client.get("/models/shared").content == stored
        kept = [name for _, name, _ in cache_of(client).entries()]
        assert kept == [f"{hashlib.sha256(stored).hexdigest()}.safetensors"]
    with TestClient(create_app(settings)) as restarted:  # no dataset in memory: the split is fetched again
        assert restarted.get("/datasets/mnist/cka").status_code == 200
        assert [name for _, name, _ in cache.entries()] == [f"{cka_sha}.safetensors"]


def test_files_larger_than_the_cache_are_served_but_not_kept(seeded_settings, store, tmp_path):
    settings = seeded_settings.model_copy(update={"data_dir": tmp_path, "cache_max_bytes": 0,
                                                  "minio_model_bucket": f"models-{secrets.token_hex(4)}"})
    with TestClient(create_app(settings)) as client:
        assert client.get("/datasets/mnist/cka").status_code == 200
        stored = put_model(store, settings.minio_model_bucket, "unkept", db=client.app.state.db)
        assert client.get("/models/unkept").content == stored
        whole = client.get("/models/unkept", headers={"Range": "bytes=0-9"})  # no cached copy to take a range of
        assert whole.status_code == 200 and whole.content == stored and whole.headers["accept-ranges"] == "none"
        assert client.post("/models/unkept/predict", json={"images": [[[0] * 4] * 4]}).status_code == 200
        assert not any(cache_of(client).directory.iterdir())
