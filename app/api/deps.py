"""Dependencies named once as Annotated aliases; the objects themselves are born in the lifespan."""

import re
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi.routing import APIRoute

from app.analysis.service import Analyses
from app.datasets.service import DatasetService
from app.db.engine import Database
from app.errors import InvalidInput
from app.jobs.service import JobService
from app.registry.service import ModelRegistry
from app.settings import Settings
from app.storage.s3 import Store
from app.sweeps.service import SweepService

# The `label=key:value` query filter of the job and model pages (API and dashboard alike).
_LABEL = re.compile(r"([a-z0-9][a-z0-9._-]{0,62}):([ -~]{0,128})")


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
SweepsDep = Annotated[SweepService, Depends(_state("sweeps"))]


def _model_version(version: str, request: Request, registry: RegistryDep) -> str:
    """The `{version}` path parameter resolved: a version, or `@alias` → the version the alias names now."""
    request.state.scv_version = resolved = registry.resolve(version)
    return resolved


ModelVersion = Annotated[str, Depends(_model_version)]


def _existing_job(version: str, jobs: JobsDep) -> JobService:
    jobs.get(version)  # an unknown job is a 404 before an event stream starts
    return jobs


ExistingJobDep = Annotated[JobService, Depends(_existing_job)]


def parse_label_filter(label: Annotated[list[str] | None, Query(
        description="`key:value`; repeat to require several labels", max_length=16)] = None) -> list[tuple[str, str]]:
    pairs = []
    for item in label or []:
        match = _LABEL.fullmatch(item)
        if not match:
            raise InvalidInput(f"invalid label filter {item[:80]!r}: use key:value, the key matching "
                               "^[a-z0-9][a-z0-9._-]{0,62}$ and the value up to 128 printable characters",
                               field="label")
        pairs.append((match.group(1), match.group(2)))
    return pairs


LabelFilter = Annotated[list[tuple[str, str]], Depends(parse_label_filter)]


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
