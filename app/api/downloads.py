"""How a stored model's file goes out (ETag, Range, HEAD; from the local cache or from storage), for the API's
download route and the dashboard's alike."""

import re
from collections.abc import Iterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from app.api.problems import problem
from app.api.server import FileSliceResponse, pumped
from app.registry.service import CHUNK_BYTES, READ_AHEAD, ModelRegistry
from app.storage.cache import OpenSlice

_RANGE = re.compile(r"bytes\s*=\s*(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


def model_file(version: str, request: Request, registry: ModelRegistry) -> Response:
    """The model file, from the local cache when it holds it, else streamed from storage; ETag = sha256,
    `Range` → 206, `If-None-Match` → 304."""
    model = registry.get(version)
    size, etag = model["size_bytes"], f'"{model["sha256"]}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes",
               "Content-Disposition": f'attachment; filename="{version}.safetensors"'}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    span = byte_range(request.headers.get("range"), size) if if_range in (None, etag) else None
    if span == "unsatisfiable":
        return problem(416, title="Range not satisfiable", headers={"Content-Range": f"bytes */{size}"},
                       detail=f"the requested range lies outside the {size}-byte file")
    start, end = span or (0, size - 1)
    status = 206 if span else 200
    headers["Content-Length"] = str(end - start + 1)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    body = registry.download(model, offset=start, length=end - start + 1)
    if isinstance(body, OpenSlice):  # from the local cache: sent by the kernel where the server can
        return FileSliceResponse(body, status_code=status, headers=headers, chunk_bytes=CHUNK_BYTES)
    # from storage: read by a thread up to READ_AHEAD pieces ahead of the client, so reads overlap sends
    return StreamingResponse(pumped(_opened(body), depth=READ_AHEAD, name="scv-download"), status_code=status,
                             headers=headers, media_type="application/octet-stream")


def _opened(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # Open the object before the status line goes out, so a storage failure is still a problem+json.
    first = next(chunks, b"")

    def rest() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:  # also when the client went away: stop the reads in flight now, not at GC
            chunks.close()

    return rest()


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single `bytes=` range, "unsatisfiable", or None to send the whole file.

    Multiple ranges, other units and malformed values are ignored (RFC 9110 allows it): the whole file.
    """
    match = _RANGE.fullmatch((header or "").strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = (int(g) if g else None for g in match.groups())
    if first is None:  # the last `last` bytes
        return (max(0, size - last), size - 1) if last > 0 and size > 0 else "unsatisfiable"
    if last is not None and last < first:
        return None
    return (first, min(size - 1, last if last is not None else size)) if first < size else "unsatisfiable"

