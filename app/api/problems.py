"""Every error of every route and guard rendered once, as RFC 9457 application/problem+json."""

import logging
from collections.abc import Iterable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import Accepted, ServiceError, Unavailable

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


MALFORMED = "https://scv.dev/problems/malformed-body"


def documented(description: str) -> dict:
    """An error response for a route's `responses`: problem+json only (`app.api.openapi` adds the Problem schema)."""
    return {"description": description,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


# Documented on every route, so clients (and the schema fuzzer) know the error shape.
PROBLEM_RESPONSES = {
    401: documented("Missing or wrong bearer token (when SCV_API_TOKEN is set)"),
    404: documented("Not found"),
    421: documented("The service is bound to a loopback address and the `Host` is not one of its names"),
    422: documented("Invalid input, naming the field"),
    503: documented("Storage or the catalog database unavailable; retry after `Retry-After` seconds"),
}
# Added by the routes that read a body.
BODY_RESPONSES = {
    400: documented("The body is not JSON: a syntax error, or bytes that are not UTF-8, -16 or -32"),
    413: documented("The body exceeds SCV_MAX_BODY_BYTES"),
}
HTTP_TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
               406: "Not acceptable", 413: "Payload too large", 416: "Range not satisfiable"}


def problem(status: int, *, title: str, detail: str, type_: str = "about:blank",
            headers: dict | None = None, extra: dict | None = None) -> JSONResponse:
    """A problem+json response; `extra` members never override the standard ones."""
    body = {**(extra or {}), "type": type_, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc) -> str:
    # ("body", "layers", 2, "kernel_size") -> "layers[2].kernel_size": the name a client sent.
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def invalid_fields(errors: Iterable[dict]) -> tuple[str, list[dict]]:
    """Pydantic's errors as a 422 states them: a one-line detail and the `errors` member, each `{field, message}`
    naming the field as the client (or the dashboard's form) sent it."""
    listed = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in errors]
    return "; ".join(f"{e['field']}: {e['message']}" for e in listed) or "invalid request", listed


async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
    if exc.status >= 500:
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.detail)
    return problem(exc.status, title=exc.title, detail=exc.detail, type_=exc.type, headers=headers,
                   extra=exc.extra)


def malformed_body(reason: str) -> JSONResponse:
    """400 for a body that cannot be parsed at all, said as every other problem is."""
    return problem(400, title="Malformed request body", type_=MALFORMED, extra={"field": "body"},
                   detail=f"the request body is not valid JSON ({reason}); send one JSON object with "
                          "`Content-Type: application/json`")


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    undecodable = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if undecodable:
        error = undecodable[0]
        position = error["loc"][-1] if len(error.get("loc", ())) > 1 else None
        reason = str((error.get("ctx") or {}).get("error") or error.get("msg", "")).removeprefix("Invalid JSON: ")
        return malformed_body(reason + (f" at character {position}" if isinstance(position, int) else ""))
    detail, errors = invalid_fields(exc.errors())
    return problem(422, title="Invalid request", detail=detail,
                   type_="https://scv.dev/problems/invalid-input", extra={"errors": errors})


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeError):
        return malformed_body(f"undecodable: {exc.__cause__}")  # FastAPI's "error parsing the body"
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem(exc.status_code, title=HTTP_TITLES.get(exc.status_code, "Error"), detail=detail,
                   headers=getattr(exc, "headers", None))


async def accepted(request: Request, exc: Accepted) -> JSONResponse:
    location = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return JSONResponse(exc.body, status_code=202, headers={"Location": location,
                                                            "Retry-After": str(exc.retry_after_s)})


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, title="Internal error",
                   detail="the service failed unexpectedly; the error is logged on the server")


HANDLERS = {ServiceError: service_error, RequestValidationError: validation_error, HTTPException: http_error,
            Accepted: accepted, Exception: unexpected_error}  # the app's exception_handlers
