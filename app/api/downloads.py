"""How a stored model's file goes out, for the API's download route and the dashboard's alike: a cached copy as
Starlette's FileResponse, a first download streamed from storage by a thread that reads ahead of the client."""

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from datetime import datetime
from email.utils import formatdate

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from app.api.problems import problem
from app.registry.files import CHUNK_BYTES
from app.registry.service import ModelRegistry

OCTET_STREAM = "application/octet-stream"
READ_AHEAD = 4  # pieces a download reads from storage ahead of the client


def model_file(version: str, request: Request, registry: ModelRegistry) -> Response:
    """The model file, from the local cache when it holds it (a `Range` fetches it there first), else streamed
    from storage; ETag = sha256, `Range` → 206, `If-None-Match` → 304."""
    return served_file(registry.get(version), request, registry, filename=f"{version}.safetensors")


def snapshot_file(version: str, epoch: int, request: Request, registry: ModelRegistry) -> Response:
    """The model file of the model's snapshot of `epoch`, sent as the model file is (`model_file`)."""
    return served_file(registry.snapshot(version, epoch), request, registry,
                       filename=f"{version}.epoch-{epoch}.safetensors")


def served_file(model: dict, request: Request, registry: ModelRegistry, *, filename: str) -> Response:
    """A served item's file (`registry.get()`'s or `registry.snapshot()`'s), as `model_file` describes."""
    etag = f'"{model["sha256"]}"'
    headers = {"ETag": etag, "Content-Disposition": f'attachment; filename="{filename}"',
               "Last-Modified": formatdate(datetime.fromisoformat(model["created_at"]).timestamp(), usegmt=True)}
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if path := registry.cached_file(model, fetch=request.method == "GET" and "range" in request.headers):
        return ModelFile(path, headers=headers, media_type=OCTET_STREAM)
    # Not cached (or too large to keep, so a Range is ignored, as RFC 9110 allows): the whole file from storage.
    keeps = registry.cache.keeps(model["sha256"], model["size_bytes"])
    headers.update({"Content-Length": str(model["size_bytes"]), "Accept-Ranges": "bytes" if keeps else "none"})
    if request.method == "HEAD":
        return Response(headers=headers, media_type=OCTET_STREAM)
    # Read by a thread up to READ_AHEAD pieces ahead of the client (so reads overlap sends); the first piece is read
    # before the status line, so a storage failure is still problem+json.
    return StreamingResponse(pumped(_opened(registry.download(model)), depth=READ_AHEAD, name="scv-download"),
                             headers=headers, media_type=OCTET_STREAM)


class ModelFile(FileResponse):
    """A cached model file as Starlette sends it (`Range`, `If-Range`, `HEAD`, `http.response.pathsend` where the
    server offers it), with two answers of its own: a range outside the file is problem+json like every error of
    the API, and a `Range` that cannot be read (Starlette's 400) is ignored, as RFC 9110 asks: the whole file."""

    chunk_size = CHUNK_BYTES

    async def __call__(self, scope, receive, send) -> None:
        refused: list[dict] = []

        async def send_unless_refused(message: dict) -> None:
            if refused or (message["type"] == "http.response.start" and message["status"] in (400, 416)):
                refused.append(message)  # Starlette's plain-text answer to the Range header: answered below
            else:
                await send(message)

        await super().__call__(scope, receive, send_unless_refused)
        if not refused:
            return
        if refused[0]["status"] == 400:
            await super().__call__({**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"range"]},
                                   receive, send)
            return
        size = self.headers["content-length"]
        named = {"X-SCV-Version": v} if (v := self.headers.get("x-scv-version")) else {}
        await problem(416, title="Range not satisfiable", headers={"Content-Range": f"bytes */{size}", **named},
                      detail=f"the requested range lies outside the {size}-byte file")(scope, receive, send)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (or `*`): the answer is 304 (FileResponse does not check)."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _opened(chunks: Iterator[bytes]) -> Iterator[bytes]:
    first = next(chunks, b"")

    def rest() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:  # also when the client went away: stop the reads in flight now, not at GC
            chunks.close()

    return rest()


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
        with suppress(RuntimeError):  # the loop has closed: nobody waits for it
            loop.call_soon_threadsafe(ready.put_nowait, item)

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
