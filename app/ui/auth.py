"""Dashboard sign-in and sign-out: SCV_API_TOKEN typed once, then a signed session cookie."""

import hmac
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from app.ui.rendering import PageRoute, SessionDep, render, safe_next, set_session_cookie, signer, signing_in
from app.ui.session import COOKIE, end_session

router = APIRouter(route_class=PageRoute)  # under /ui (app/ui/__init__.py)


@router.get("/login")
def login_form(request: Request, next: str = "/ui") -> Response:
    if not signing_in(request):
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), failed=False)


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=4096)],
          next: Annotated[str, Form(max_length=2048)] = "/ui") -> Response:
    """Check the token once; the session cookie stands for it from then on (the token itself is not kept)."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return RedirectResponse(safe_next(next), status_code=303)
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):  # constant time
        return render(request, "login.html", status_code=401, next=safe_next(next), failed=True)
    _, cookie = signer(request).issue()
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep) -> Response:
    """End the session on every replica (a copy of its cookie is refused too), and drop the cookie."""
    end_session(request.app.state.db, session)
    response = RedirectResponse("/ui/login" if signing_in(request) else "/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response
