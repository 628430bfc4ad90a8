"""ASGI guards in front of every route: the loopback Host check, bearer-token auth and the request body size cap."""

import hmac

from starlette.exceptions import HTTPException

from app.api.problems import problem
from app.settings import is_loopback

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
UI_PREFIX = "/ui"  # the dashboard checks its own session cookie (app/ui/rendering.py)


def _open(scope) -> bool:
    """Health routes, the dashboard (it signs its users in itself) and `/` for a browser (redirected to it)."""
    path = scope["path"]
    if path in OPEN_PATHS or path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
        return True
    return path == "/" and b"text/html" in dict(scope["headers"]).get(b"accept", b"")


class BearerAuth:
    """401 unless `Authorization: Bearer <token>` matches; health routes and the dashboard stay open."""

    def __init__(self, app, *, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _open(scope):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            refused = problem(401, title="Unauthorized",
                              detail="missing or wrong bearer token; send `Authorization: Bearer <SCV_API_TOKEN>`",
                              headers={"WWW-Authenticate": 'Bearer realm="scv"'})
            return await refused(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """413 for request bodies over `max_bytes`, by Content-Length or while streaming."""

    def __init__(self, app, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.too_big = f"request body exceeds {max_bytes} bytes (SCV_MAX_BODY_BYTES)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched and renders as 413.
                    raise HTTPException(status_code=413, detail=self.too_big)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if started or exc.status_code != 413:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        await problem(413, title="Payload too large", detail=self.too_big)(scope, receive, send)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


class LoopbackHosts:
    """421 for a request to a loopback-bound server whose Host is not a loopback name or one of `allowed`: a page
    on another site that renamed itself to 127.0.0.1 (DNS rebinding) cannot reach the service through a browser."""

    def __init__(self, app, *, allowed: tuple[str, ...] = ()):
        self.app, self.allowed = app, LOOPBACK_NAMES | {name.lower() for name in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not _loopback(scope.get("server")):
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]  # the port aside
        if name not in self.allowed:
            refused = problem(421, title="Misdirected request",
                              detail=f"this service is bound to a loopback address and answers only for "
                                     f"{', '.join(sorted(self.allowed))}; add the name to SCV_ALLOWED_HOSTS")
            return await refused(scope, receive, send)
        return await self.app(scope, receive, send)


def _loopback(server) -> bool:
    """Whether the address the server accepted this connection on (ASGI scope["server"]) is a loopback one; the
    test client's "testserver" and a Unix socket have no address a page could rebind."""
    return server is not None and server[0] != "localhost" and is_loopback(str(server[0]))
