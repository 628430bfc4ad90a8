"""Downloads through a real `scv serve`: cached files as Starlette sends them (ranges, HEAD, 304, a client that
hangs up mid-file), first ones streamed from storage; a first download a client leaves (in-process, to look at its
reads); and the read-ahead pump itself."""

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from app.api.downloads import pumped
from app.db.engine import Database
from app.storage.embedded import free_ports
from tests.support.liveserver import LiveServer
from tests.support.registry import put_model, settle
from tests.support.waiting import wait_until

SIZE = 6 * 1024 * 1024 + 123  # more than the socket buffers of a client that reads slowly hold


@pytest.fixture
def served(settings, tmp_path):
    """`scv serve` in a process of its own on the test's buckets and SCV_DATA_DIR: (its URL, its log file)."""
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    env.update(MINIO_ENDPOINT=settings.minio_endpoint, MINIO_ACCESS_KEY=settings.minio_access_key,
               MINIO_SECRET_KEY=settings.minio_secret_key.get_secret_value(),
               MINIO_MODEL_BUCKET=settings.minio_model_bucket, MINIO_DATASET_BUCKET=settings.minio_dataset_bucket,
               SCV_DATA_DIR=str(settings.data_dir))
    (tmp_path / "cwd").mkdir()
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                   cwd=tmp_path / "cwd", env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url, process), timeout=120, what="scv serve answering /readyz")
        yield url, log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _ready(url: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "scv serve exited"
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_cached_downloads_keep_ranges_head_and_304_and_survive_a_client_hanging_up(served, settings, store):
    url, log = served
    blob = os.urandom(SIZE)
    sha = hashlib.sha256(blob).hexdigest()
    etag, bucket = f'"{sha}"', settings.minio_model_bucket
    db = Database(settings.catalog_url)  # the server's catalog: SQLite in SCV_DATA_DIR serves several processes
    put_model(store, bucket, "served", db=db, blob=blob)
    db.dispose()
    with httpx.Client(base_url=url, timeout=60) as client:
        first = client.get("/models/served")  # from storage; the cache fills afterwards
        assert first.status_code == 200 and first.content == blob and first.headers["etag"] == etag
        wait_until(lambda: (settings.data_dir / "cache" / f"{sha}.safetensors").exists(), timeout=60,
                   what="cache fill")
        store.delete(bucket=bucket, key="served/model.safetensors")  # from now on only the cache can answer

        whole = client.get("/models/served")
        assert whole.status_code == 200 and whole.content == blob
        assert {k: whole.headers[k] for k in ("etag", "content-length", "content-type", "content-disposition",
                                              "last-modified", "x-scv-version", "accept-ranges")} == {
            "etag": etag, "content-length": str(SIZE), "content-type": "application/octet-stream",
            "content-disposition": 'attachment; filename="served.safetensors"',
            "last-modified": first.headers["last-modified"], "x-scv-version": "served", "accept-ranges": "bytes"}
        part = client.get("/models/served", headers={"Range": "bytes=1000-4500000"})
        assert part.status_code == 206 and part.content == blob[1000:4500001]
        assert part.headers["content-range"] == f"bytes 1000-4500000/{SIZE}"
        assert client.get("/models/served", headers={"Range": "bytes=-7"}).content == blob[-7:]
        several = client.get("/models/served", headers={"Range": "bytes=0-9,100-109"})
        assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")
        assert blob[:10] in several.content and blob[100:110] in several.content
        stale = client.get("/models/served", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == blob
        beyond = client.get("/models/served", headers={"Range": f"bytes={SIZE}-"})
        assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/problem+json"
        assert beyond.headers["content-range"] == f"bytes */{SIZE}"
        head = client.head("/models/served")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(SIZE)
        same = client.get("/models/served", headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag

        with socket.socket() as gone:  # reads a little of the file, then hangs up
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            gone.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            gone.sendall(b"GET /models/served HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert gone.recv(4096).startswith(b"HTTP/1.1 200")
        again = client.get("/models/served")  # the server goes on serving, the same connection too
        assert again.status_code == 200 and again.content == blob
        assert client.get("/readyz").status_code == 200
    assert "Traceback" not in log.read_text()


def test_a_client_that_leaves_a_first_download_stops_its_storage_reads(settings, store):
    blob = os.urandom(16 * 1024 * 1024)  # more than the socket buffers and the read-ahead hold
    with LiveServer(settings) as live, live.client() as client:  # uvicorn as `scv serve` runs it, in this process
        app = live.server.config.app
        put_model(store, settings.minio_model_bucket, "left-early", db=app.state.db, blob=blob)
        with socket.socket() as gone:
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no growing to hold it all
            gone.connect(("127.0.0.1", live.port))
            gone.sendall(b"GET /models/left-early HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert gone.recv(4096).startswith(b"HTTP/1.1 200")
            wait_until(lambda: _pumps() == 1, timeout=10, what="download pump")  # reading from storage
            time.sleep(0.5)
            assert _pumps() == 1  # still there: the client has not read the rest
        wait_until(lambda: _pumps() == 0, timeout=10, what="end of the pump")  # the reads stopped
        settle(app.state.registry, 60)
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
