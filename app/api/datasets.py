"""Dataset routes: the list, one manifest, and the CKA sample set as safetensors, JSON or a PNG grid."""

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save

from app.api.deps import DatasetsDep
from app.datasets import definitions

router = APIRouter(prefix="/datasets", tags=["datasets"])
NOT_FOUND = {404: {"description": "unknown dataset, or not seeded yet (the detail says how to seed it)"}}


class Manifest(BaseModel):
    """What seeding recorded about one dataset; `classes[i]` names label i."""

    name: str
    classes: list[str]
    num_classes: int
    image_shape: list[int] = Field(description="[C, H, W]")
    mean: list[float] = Field(description="per channel, of the train split, on the [0, 1] scale")
    std: list[float]
    train_size: int
    test_size: int
    cka_per_class: int
    sha256: dict[str, str] = Field(description="object name -> sha256 hex of its stored bytes")
    sizes: dict[str, int]
    created_at: str
    format: str


class DatasetEntry(BaseModel):
    """One of the five datasets; the manifest's fields follow when it is seeded."""

    model_config = ConfigDict(extra="allow")
    name: str
    seeded: bool


@router.get("")
def list_datasets(datasets: DatasetsDep) -> list[DatasetEntry]:
    """All five datasets: `seeded`, plus the manifest fields of those that are."""
    return datasets.list()


@router.get("/{name}", responses=NOT_FOUND)
def get_manifest(name: str, datasets: DatasetsDep) -> Manifest:
    """The manifest: classes, image shape, train-split mean/std, sizes, sha256 of each object."""
    return datasets.manifest(name)


@router.get("/{name}/cka", responses={**NOT_FOUND, 200: {"content": {
    "application/octet-stream": {}, "application/json": {}, "image/png": {}}}})
def get_cka(name: str, datasets: DatasetsDep,
            format: Literal["safetensors", "json", "png"] = "safetensors") -> Response:
    """The CKA sample set (first k test images per class, by class then index) in the chosen format."""
    if format == "png":
        return Response(datasets.cka_grid_png(name), media_type="image/png")
    images, labels, indices = datasets.cka_set(name)
    if format == "safetensors":
        # Same bytes as the stored cka.safetensors: serialisation is deterministic.
        body = save({"images": images, "labels": labels, "indices": indices})
        return Response(body, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}-cka.safetensors"'})
    return JSONResponse({"classes": list(definitions.info(name).classes), "image_shape": list(images.shape[1:]),
                         "labels": labels.tolist(), "indices": indices.tolist(), "images": images.tolist()})
