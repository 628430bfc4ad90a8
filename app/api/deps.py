"""Dependencies named once as Annotated aliases; the objects themselves are born in the lifespan."""

from typing import Annotated

from fastapi import Depends, Request

from app.analysis.service import Analyses
from app.datasets.service import DatasetService
from app.jobs.service import JobService
from app.registry.service import ModelRegistry
from app.settings import Settings
from app.storage.s3 import Store


def _state(name: str):
    def get(request: Request):
        return getattr(request.app.state, name)

    get.__name__ = f"get_{name}"
    return get


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
StoreDep = Annotated[Store, Depends(_state("store"))]
JobsDep = Annotated[JobService, Depends(_state("jobs"))]
RegistryDep = Annotated[ModelRegistry, Depends(_state("registry"))]
DatasetsDep = Annotated[DatasetService, Depends(_state("datasets"))]
AnalysesDep = Annotated[Analyses, Depends(_state("analyses"))]
