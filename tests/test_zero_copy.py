"""Cached downloads through a real `scv serve` protocol: sent by the kernel (os.sendfile), ranges, HEAD, 304, and a
client that goes away mid-file."""

import hashlib
import os
import socket

from bench.liveserver import LiveServer
from tests.test_registry import put_model

SIZE = 6 * 1024 * 1024 + 123  # more than a socket buffer holds: the send takes several sendfile calls


def test_cached_downloads_are_sent_by_the_kernel_exactly_as_from_storage(settings, store, monkeypatch):
    sent = []
    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *args: sent.append(args) or real_sendfile(*args))
    blob = os.urandom(SIZE)
    etag = f'"{hashlib.sha256(blob).hexdigest()}"'
    with LiveServer(settings) as live, live.client() as client:
        app = live.server.config.app
        put_model(store, settings.minio_model_bucket, "zero-copy", db=app.state.db, blob=blob)
        assert client.get("/models/zero-copy").content == blob  # from storage; the cache fills afterwards
        app.state.registry.settle(60)
        assert sent == []

        whole = client.get("/models/zero-copy")
        assert whole.status_code == 200 and whole.content == blob and whole.headers["etag"] == etag
        assert whole.headers["content-length"] == str(SIZE) and sent  # the kernel sent it
        part = client.get("/models/zero-copy", headers={"Range": "bytes=1000-4500000"})
        assert part.status_code == 206 and part.content == blob[1000:4500001]
        assert part.headers["content-range"] == f"bytes 1000-4500000/{SIZE}"
        assert client.get("/models/zero-copy", headers={"Range": "bytes=-7"}).content == blob[-7:]
        head = client.head("/models/zero-copy")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(SIZE)
        assert client.get("/models/zero-copy", headers={"If-None-Match": etag}).status_code == 304

        with socket.create_connection(("127.0.0.1", live.port)) as gone:  # reads a little, then hangs up
            gone.sendall(b"GET /models/zero-copy HTTP/1.1\r\nHost: test\r\n\r\n")
            assert gone.recv(4096).startswith(b"HTTP/1.1 200")
        again = client.get("/models/zero-copy")  # the server goes on serving, the same connection too
        assert again.status_code == 200 and again.content == blob
        assert client.get("/readyz").status_code == 200
