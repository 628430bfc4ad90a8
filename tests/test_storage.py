"""The storage seam against the real embedded S3 server."""

import hashlib
import io
import os

import pytest

from app.errors import ObjectMissing, StorageUnavailable
from app.storage.s3 import Store


class UnknownLength(io.RawIOBase):
    """A stream that hides its size, like a socket or a generator of model bytes."""

    def __init__(self, data: bytes):
        self._buffer = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


@pytest.fixture
def bucket(store):
    name = "storage-" + os.urandom(4).hex()
    store.ensure_buckets(name)
    return name


def test_upload_of_unknown_length_round_trips_byte_identical(store, bucket):
    data = os.urandom(20 * 1024 * 1024 + 12345)  # spans two multipart parts
    store.put(bucket=bucket, key="big/blob.bin", data=UnknownLength(data))
    assert store.stat(bucket=bucket, key="big/blob.bin").size == len(data)
    streamed = b"".join(store.iter_bytes(bucket=bucket, key="big/blob.bin"))
    assert hashlib.sha256(streamed).digest() == hashlib.sha256(data).digest()
    assert store.get_bytes(bucket=bucket, key="big/blob.bin") == data
    assert b"".join(store.iter_bytes(bucket=bucket, key="big/blob.bin", offset=100, length=100)) == data[100:200]


def test_list_and_delete_prefix(store, bucket):
    for key in ("v1/model.safetensors", "v1/metadata.json", "v10/model.safetensors", "v2/job.json"):
        store.put(bucket=bucket, key=key, data=key.encode())
    assert [o.key for o in store.list(bucket=bucket, prefix="v1/")] == ["v1/metadata.json", "v1/model.safetensors"]
    assert store.delete_prefix(bucket=bucket, prefix="v1/") == 2
    assert [o.key for o in store.list(bucket=bucket)] == ["v10/model.safetensors", "v2/job.json"]
    store.delete(bucket=bucket, key="v2/job.json")
    assert not store.exists(bucket=bucket, key="v2/job.json")


def test_missing_key_is_a_domain_error(store, bucket):
    with pytest.raises(ObjectMissing):
        store.stat(bucket=bucket, key="nope")
    with pytest.raises(ObjectMissing):
        store.get_bytes(bucket=bucket, key="nope")
    with pytest.raises(ObjectMissing):
        store.get_json(bucket="no-such-bucket-" + os.urandom(3).hex(), key="x")


def test_wrong_credentials_name_the_endpoint_not_the_secret(s3):
    bad = Store(endpoint=s3.endpoint, access_key="scv-test-access", secret_key="not-the-secret-at-all")
    with pytest.raises(StorageUnavailable) as caught:
        list(bad.list(bucket="models"))
    assert s3.endpoint in caught.value.detail
    assert "not-the-secret-at-all" not in caught.value.detail
