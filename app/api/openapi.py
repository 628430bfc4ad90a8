"""The OpenAPI document clients are generated from: FastAPI's, plus the Problem schema every error response names."""

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from app.api.schemas import Problem

REF = "#/components/schemas/{model}"


def document(app: FastAPI) -> dict:
    """`app.openapi`, as FastAPI's "Extending OpenAPI" does it: built once, then served from `app.openapi_schema`.

    Error responses are declared as problem+json only (`problems.documented`), without a `model` that FastAPI would
    list under the route's own media type too, so the Problem schema they reference is added here."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, extra = models_json_schema([(Problem, "serialization")], ref_template=REF)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(extra["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema
