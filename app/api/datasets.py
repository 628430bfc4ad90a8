"""Dataset routes: the list, one manifest, and the CKA sample set as safetensors, JSON or a PNG grid."""

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from safetensors.torch import save

from app.api.deps import DatasetsDep
from app.api.problems import documented
from app.api.schemas import CKASampleSet, DatasetEntry, Manifest
from app.datasets import definitions

router = APIRouter(prefix="/datasets", tags=["datasets"])
NOT_FOUND = {404: documented("Unknown dataset, or not seeded yet (the detail says how to seed it)")}


@router.get("")
def list_datasets(datasets: DatasetsDep) -> list[DatasetEntry]:
    """All five datasets: `seeded`, plus the manifest fields of those that are."""
    return datasets.list()


@router.get("/{name}", responses=NOT_FOUND)
def get_manifest(name: str, datasets: DatasetsDep) -> Manifest:
    """The manifest: classes, image shape, train-split mean/std, sizes, sha256 of each object."""
    return datasets.manifest(name)


@router.get("/{name}/cka", responses={**NOT_FOUND, 200: {
    "model": CKASampleSet, "description": "safetensors (`images`, `labels`, `indices`), JSON or a PNG grid",
    "content": {"application/octet-stream": {}, "image/png": {}}}})
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
