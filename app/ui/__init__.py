"""The dashboard at /ui: server-rendered pages over the same services as the API, its session and static files.

`router` holds every page (none in the OpenAPI schema) and the `/` redirect for browsers; STATIC_DIR (at STATIC_PATH)
the CSS, the small ES modules and the vendored htmx and uPlot. The API and its bearer auth stay as they are.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from app.ui import auth, datasets, jobs, models, sweeps
from app.ui.rendering import HERE, current_session

STATIC_PATH, STATIC_DIR = "/ui/static", HERE / "static"
router = APIRouter(include_in_schema=False)
router.include_router(auth.router, prefix="/ui")
for part in (jobs, models, sweeps, datasets):  # every page but sign-in asks for the browser's session first
    router.include_router(part.router, prefix="/ui", dependencies=[Depends(current_session)])


@router.get("/")
def root(request: Request) -> RedirectResponse:
    """A browser asking for `/` goes to the dashboard; an API client gets the usual 404."""
    if "text/html" not in request.headers.get("accept", ""):
        raise HTTPException(status_code=404)
    return RedirectResponse("/ui", status_code=307)
