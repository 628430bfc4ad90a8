"""Dependencies named once as Annotated aliases; the objects themselves are born in the lifespan."""

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from app.analysis.service import Analyses
from app.datasets.service import DatasetService
from app.db.engine import Database
from app.jobs.service import JobService
from app.registry.service import ModelRegistry
from app.settings import Settings
from app.storage.s3 import Store


def _state(name: str):
    def get(request: Request):
        return getattr(request.app.state, name)

    get.__name__ = f"get_{name}"
    return get


DatabaseDep = Annotated[Database, Depends(_state("db"))]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
StoreDep = Annotated[Store, Depends(_state("store"))]
JobsDep = Annotated[JobService, Depends(_state("jobs"))]
RegistryDep = Annotated[ModelRegistry, Depends(_state("registry"))]
DatasetsDep = Annotated[DatasetService, Depends(_state("datasets"))]
AnalysesDep = Annotated[Analyses, Depends(_state("analyses"))]


def _model_version(version: str, request: Request, registry: RegistryDep) -> str:
    """The `{version}` path parameter resolved: a version, or `@alias` → the version the alias names now."""
    request.state.scv_version = resolved = registry.resolve(version)
    return resolved


ModelVersion = Annotated[str, Depends(_model_version)]


class ModelRoute(APIRoute):
    """A `/models/{version}…` route: its response names the version it answered for in `X-SCV-Version`."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            response = await handle(request)
            if version := getattr(request.state, "scv_version", None):
                response.headers["X-SCV-Version"] = version
            return response

        return handler
