"""Downloads through a real `scv serve` protocol: cached ones sent by the kernel (os.sendfile), with ranges, HEAD,
304; first ones passed through from storage by a pump thread; clients that go away mid-file. And the pump itself."""

import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest

from app.api.server import pumped
from tests.support.liveserver import LiveServer
from tests.support.registry import put_model
from tests.support.waiting import wait_until

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


def test_a_client_that_leaves_a_first_download_stops_its_storage_reads(settings, store):
    blob = os.urandom(16 * 1024 * 1024)  # more than the socket buffers and the read-ahead hold
    with LiveServer(settings) as live, live.client() as client:
        app = live.server.config.app
        put_model(store, settings.minio_model_bucket, "left-early", db=app.state.db, blob=blob)
        with socket.socket() as gone:
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no growing to hold it all
            gone.connect(("127.0.0.1", live.port))
            gone.sendall(b"GET /models/left-early HTTP/1.1\r\nHost: test\r\n\r\n")
            assert gone.recv(4096).startswith(b"HTTP/1.1 200")
            wait_until(lambda: _pumps() == 1, timeout=10, what="download pump")  # reading from storage
            time.sleep(0.5)
            assert _pumps() == 1  # still there: the client has not read the rest
        wait_until(lambda: _pumps() == 0, timeout=10, what="end of the pump")  # the reads stopped
        app.state.registry.settle(60)
        assert not app.state.registry.cache.path(hashlib.sha256(blob).hexdigest()).exists()  # nor was it cached
        whole = client.get("/models/left-early")
        assert whole.status_code == 200 and whole.content == blob


def _pumps() -> int:
    return sum(thread.name == "scv-download" for thread in threading.enumerate())


def test_the_pump_keeps_order_reads_ahead_only_so_far_and_raises_errors_in_order():
    made, closed = [], threading.Event()

    def chunks(fail_at=None):
        try:
            for i in range(20):
                if i == fail_at:
                    raise OSError(f"storage went away at {i}")
                made.append(i)
                yield bytes([i])
        finally:
            closed.set()

    async def take(source, count=None):
        got, ahead = [], []
        stream = pumped(source, depth=3, name="test-pump")
        async for chunk in stream:
            got.append(chunk[0])
            await asyncio.sleep(0.01)  # a slow client: the pump waits for room
            ahead.append(len(made) - len(got))
            if len(got) == count:
                await stream.aclose()
                break
        return got, max(ahead)

    got, ahead = asyncio.run(take(chunks()))
    assert got == list(range(20)) and ahead <= 4 and closed.is_set()  # depth queued, one being made

    made.clear(), closed.clear()
    with pytest.raises(OSError, match="at 7"):
        asyncio.run(take(chunks(fail_at=7)))
    assert made == list(range(7)) and closed.is_set()

    made.clear(), closed.clear()
    got, _ = asyncio.run(take(chunks(), count=5))
    assert got == list(range(5)) and closed.wait(5) and len(made) <= 9  # stopped: the source closed, not drained
