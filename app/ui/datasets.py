"""Dashboard pages for datasets: each manifest and its CKA sample grid."""

from fastapi import APIRouter, Request, Response

from app.api.deps import DatasetsDep
from app.ui.rendering import PageRoute, render

router = APIRouter(route_class=PageRoute)  # under /ui, each asking for the session first (app/ui/__init__.py)


@router.get("/datasets")
def datasets_page(request: Request, datasets: DatasetsDep) -> Response:
    """All five datasets; the seeded ones with their manifest and CKA sample grid."""
    entries = datasets.list()
    for entry in entries:
        if entry["seeded"]:
            _, labels, indices = datasets.cka_set(entry["name"])
            entry["cka_rows"] = [(name, [int(i) for i, y in zip(indices, labels, strict=True) if y == label])
                                 for label, name in enumerate(entry["classes"])]
    return render(request, "datasets.html", datasets=entries)


@router.get("/datasets/{name}/cka.png")
def cka_grid(name: str, datasets: DatasetsDep) -> Response:
    """The CKA sample set as `GET /datasets/{name}/cka?format=png` draws it: one row per class."""
    return Response(datasets.cka_grid_png(name), media_type="image/png")
