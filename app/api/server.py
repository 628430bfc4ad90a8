"""uvicorn as this service runs it: HTTP/1.1 (httptools) plus ASGI's zero-copy send extension, which uvicorn lacks.

A download from the local cache names an open file and a byte range (`http.response.zerocopysend`); the protocol
below hands it to `loop.sendfile`, so the kernel copies page cache to the socket (os.sendfile) and no byte of the
file passes through Python. asyncio's own event loop is used because uvloop has no sendfile. Under a server
without the extension (TestClient, another ASGI server) the app sends the same bytes in pieces. A download from
storage is a body of blocking reads: `pumped` makes them in a thread, ahead of the sends.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import uvicorn
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import is_ssl

from app.storage.cache import OpenSlice

ZERO_COPY = "http.response.zerocopysend"


class ZeroCopyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol offering `http.response.zerocopysend` (file, offset, count, more_body).

    The file goes out after the response's headers, through `loop.sendfile` once the transport's buffer is empty;
    it counts against the response's Content-Length like a body message. A client that goes away mid-file ends
    the response as a disconnect does. Offered on plain TCP only: with TLS the kernel cannot send the file.
    """

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if isinstance(self.loop, asyncio.BaseEventLoop) and not is_ssl(self.transport):
            self.scope["extensions"] = {ZERO_COPY: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        super()._start_asgi_task(cycle, partial(self._run, app, cycle))

    async def _run(self, app, cycle: RequestResponseCycle, scope, receive, send) -> None:
        async def send_files_too(message: dict[str, Any]) -> None:
            if message["type"] != ZERO_COPY:
                await send(message)
                return
            await self._send_file(cycle, message)
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await app(scope, receive, send_files_too)

    async def _send_file(self, cycle: RequestResponseCycle, message: dict[str, Any]) -> None:
        if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding:
            raise RuntimeError(f"{ZERO_COPY!r} needs a started response with a Content-Length")
        file, offset = message["file"], message.get("offset") or 0
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if cycle.scope["method"] == "HEAD" or count == 0:
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or self.transport.is_closing():
            return
        try:
            sent = await self.loop.sendfile(self.transport, file, offset, count)
        except OSError:  # the client went away mid-file: what uvicorn does when a body write finds it gone
            cycle.disconnected = True
            self.transport.abort()
            return
        cycle.expected_content_length -= sent


class FileSliceResponse(Response):
    """A byte range of an open file as the body: zero-copy where the server offers it, else in pieces of
    `chunk_bytes` read in a thread. The file is closed once sent, or once the client went away."""

    def __init__(self, part: OpenSlice, *, status_code: int, headers: dict[str, str], chunk_bytes: int):
        super().__init__(status_code=status_code, headers={**headers, "Content-Length": str(part.length)},
                         media_type="application/octet-stream")
        self.part, self.chunk_bytes = part, chunk_bytes

    async def __call__(self, scope, receive, send) -> None:
        part = self.part
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if ZERO_COPY in scope.get("extensions", {}):
                await send({"type": ZERO_COPY, "file": part.file, "offset": part.offset, "count": part.length,
                            "more_body": False})
                return
            async for piece in iterate_in_threadpool(part.pieces(self.chunk_bytes)):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            part.file.close()


async def pumped(chunks: Iterator[bytes], *, depth: int, name: str) -> AsyncIterator[bytes]:
    """`chunks` in order, drawn by a thread of their own up to `depth` chunks ahead of the consumer, so that making
    them (reads from storage) overlaps sending them; each is handed to the event loop as it comes, with no thread
    hop per chunk. An error of `chunks` is raised to the consumer in order. When the consumer stops (the client
    went away), the thread closes `chunks` once the chunk it is making is made."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue = asyncio.Queue()
    room, stop, end = threading.Semaphore(depth), threading.Event(), object()

    def pump() -> None:
        item: object = end
        try:
            for chunk in chunks:
                room.acquire()
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(ready.put_nowait, chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            item = exc
        finally:
            chunks.close()
        try:
            loop.call_soon_threadsafe(ready.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody waits for it
            pass

    threading.Thread(target=pump, name=name, daemon=True).start()
    try:
        while (item := await ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # a pump waiting for room wakes, sees the stop, and closes `chunks`


def config(app, *, host: str, port: int, log_level: str = "info", **options) -> uvicorn.Config:
    """The uvicorn configuration of `scv serve` (and of the tests' and benchmarks' live servers)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=ZeroCopyProtocol, loop="asyncio",
                          **options)


def run(app, **kwargs) -> None:
    """Serve `app` until SIGINT or SIGTERM."""
    uvicorn.Server(config(app, **kwargs)).run()
