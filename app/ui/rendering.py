"""How dashboard routes answer: Jinja2 pages, the session and CSRF checks before each route, errors as pages."""

import hmac
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.analysis.plots import viridis
from app.api.problems import invalid_fields
from app.errors import ServiceError
from app.ui.session import COOKIE, LIFETIME_S, Session, SessionSigner, has_ended

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PROCESS_SECRET = secrets.token_hex(32)  # only when neither a token nor a storage secret is configured
STATUS_ICONS = {"queued": "◷", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "⊘"}


class SignInRequired(Exception):
    """The dashboard asks for SCV_API_TOKEN and this browser has no valid session."""


class CsrfRefused(ServiceError):
    status, title, slug = 403, "Forbidden", "csrf"


def signer(request: Request) -> SessionSigner:
    settings = request.app.state.settings
    secret = settings.api_token or settings.minio_secret_key
    return SessionSigner(secret.get_secret_value() if secret else _PROCESS_SECRET)


def signing_in(request: Request) -> bool:
    """Whether this dashboard asks for a token (SCV_API_TOKEN is set)."""
    return request.app.state.settings.api_token is not None


async def current_session(request: Request) -> Session:
    """The browser's session; without SCV_API_TOKEN a new one is issued. Every write must carry its CSRF token."""
    session = signer(request).read(request.cookies.get(COOKIE))
    if session is not None and await run_in_threadpool(has_ended, request.app.state.db, session):
        session = None
    if session is None:
        if signing_in(request):
            raise SignInRequired
        session, request.state.ui_cookie = signer(request).issue()
    request.state.ui_session = session
    if request.method in WRITES:
        given = request.headers.get("x-csrf-token")
        if given is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            given = (await request.form()).get("csrf_token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise CsrfRefused("this form is stale or did not come from the dashboard (CSRF token missing or wrong); "
                              "reload the page and try again")
    return session


SessionDep = Annotated[Session, Depends(current_session)]


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=LIFETIME_S, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, template: str, status_code: int = 200, headers: dict | None = None,
           **context) -> Response:
    """A page (or, for htmx, a partial) with what every template needs: the session's CSRF token, sign-in state."""
    session = getattr(request.state, "ui_session", None)
    context = {"csrf": session.csrf if session else "", "signing_in": signing_in(request), **context}
    # One URL answers a page or, to htmx, its partial: caches must tell them apart.
    headers = {"Vary": "HX-Request", "Cache-Control": "no-store", **(headers or {})}
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code, headers=headers)


def error_page(request: Request, *, status: int, title: str, detail: str) -> Response:
    template = "_error.html" if is_htmx(request) else "error.html"
    return render(request, template, status_code=status, title=title, detail=detail)


class PageRoute(APIRoute):
    """A dashboard route: sign-in redirects, domain errors and bad parameters rendered as pages, new cookies set."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await handle(request)
            except SignInRequired:  # back to this page after signing in (a partial's own page for htmx)
                here = request.headers.get("hx-current-url") if is_htmx(request) else str(request.url)
                login = "/ui/login?" + urlencode({"next": safe_next(here)})
                if is_htmx(request):  # htmx swaps what it fetched; this makes the whole page go
                    return Response(status_code=401, headers={"HX-Redirect": login})
                return RedirectResponse(login, status_code=303)
            except ServiceError as exc:
                response = error_page(request, status=exc.status, title=exc.title, detail=exc.detail)
            except RequestValidationError as exc:
                detail, _ = invalid_fields(exc.errors())
                response = error_page(request, status=422, title="Invalid request", detail=detail)
            if cookie := getattr(request.state, "ui_cookie", None):
                set_session_cookie(request, response, cookie)
            return response

        return handler


def safe_next(url: str | None) -> str:
    """A dashboard path to go to after signing in; anything else (another origin, the API) becomes /ui."""
    parts = urlsplit(url or "")
    if parts.path != "/ui" and not parts.path.startswith("/ui/"):
        return "/ui"
    return parts.path + (f"?{parts.query}" if parts.query else "")  # origin dropped: never leaves this one


def url_with(request: Request, **changes) -> str:
    """This page's URL with some query parameters replaced (None removes one); filters live in the URL."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    for key, value in changes.items():
        values = value if isinstance(value, list | tuple) else [value]
        params += [(key, v) for v in values if v is not None and v != ""]
    return request.url.path + ("?" + urlencode(params) if params else "")


def cell_colour(value: float, low: float = 0.0) -> str:
    """CSS for a heatmap cell: viridis background, and text that stays readable on it."""
    fraction = (value - low) / (1.0 - low) if low < 1.0 else 1.0
    r, g, b = viridis(fraction)
    ink = "#000" if fraction > 0.55 else "#fff"
    return f"background:rgb({r},{g},{b});color:{ink}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


TEMPLATES.env.globals.update(url_with=url_with, STATUS_ICONS=STATUS_ICONS, cell_colour=cell_colour)
TEMPLATES.env.filters.update(percent=percent, number=number)
