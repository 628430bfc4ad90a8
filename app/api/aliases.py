"""Alias routes: names for models (`production`, `mnist-best`) that `/models/@{alias}…` resolves."""

from fastapi import APIRouter, Response

from app.api.deps import RegistryDep
from app.api.problems import BODY_RESPONSES, documented
from app.api.schemas import AliasRecord, AliasTarget

router = APIRouter(prefix="/aliases", tags=["aliases"])


@router.get("", response_model=list[AliasRecord])
def list_aliases(registry: RegistryDep) -> list[dict]:
    """Every alias, by name."""
    return registry.list_aliases()


@router.put("/{alias}", response_model=AliasRecord, responses={
    **BODY_RESPONSES, 404: documented("No model of that version is served"),
    409: documented("The model is still training (the problem links its job)")})
def put_alias(alias: str, body: AliasTarget, registry: RegistryDep) -> dict:
    """Create the alias or move it to another model; 404 naming the version when no such model is served.
    An aliased model never expires and cannot be deleted."""
    return registry.put_alias(alias, body.version)


@router.get("/{alias}", response_model=AliasRecord)
def get_alias(alias: str, registry: RegistryDep) -> dict:
    """One alias."""
    return registry.get_alias(alias)


@router.delete("/{alias}", status_code=204, response_class=Response)
def delete_alias(alias: str, registry: RegistryDep) -> Response:
    """Remove the alias; the model stays."""
    registry.delete_alias(alias)
    return Response(status_code=204)
