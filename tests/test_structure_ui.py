"""The dashboard is a second skin over the services: no module of app/ui imports a route module of app/api."""

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, *, app: Path = APP) -> set[str]:
    """Every module `path` (under `app`) imports; `from app.api import models` counts as `app.api.models`."""
    package = ".".join(path.relative_to(app.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _route_modules() -> set[str]:
    """The modules of app/api that declare routes: those that build an APIRouter."""
    return {f"app.api.{path.stem}" for path in (APP / "api").glob("*.py")
            if any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "APIRouter"
                   for node in ast.walk(_tree(path)))}


def test_the_dashboard_imports_no_route_module():
    routes = _route_modules()
    assert {"app.api.train", "app.api.models", "app.api.datasets", "app.api.analysis", "app.api.aliases",
            "app.api.health"} <= routes
    offending = {(path.name, name) for path in (APP / "ui").rglob("*.py") for name in _imports(path) & routes}
    assert offending == set()


def test_every_form_of_import_is_seen(tmp_path):
    ui = tmp_path / "app" / "ui"
    ui.mkdir(parents=True)
    (ui / "page.py").write_text("import app.api.aliases\nfrom app.api.models import download\n"
                                "from ..api import train\nfrom . import rendering\n")
    assert {"app.api.aliases", "app.api.models", "app.api.train", "app.ui.rendering"} <= _imports(
        ui / "page.py", app=tmp_path / "app")
