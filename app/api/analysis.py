"""Analysis routes: layer-by-layer CKA, dynamics, activation maps and top-activating images of a stored model or
one of its snapshots."""

import math
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from app.analysis.minibatch import BATCH_SIZE
from app.analysis.plots import heatmap_png, to_uint8_maps
from app.analysis.service import MAX_K
from app.api.deps import AnalysesDep, ModelRoute, ModelVersion, RegistryDep
from app.api.problems import documented
from app.api.schemas import Activations, Dynamics, LayerCKA, Pending, TopImages
from app.datasets.images import grid_png

router = APIRouter(prefix="/models", tags=["analysis"], route_class=ModelRoute)
TILE_PX = 64  # grid tiles are scaled up by a whole factor to about this many pixels
STRIP_ROWS = 8  # a flat layer's one-row map is drawn this tall, so it can be seen
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
ERRORS = {404: documented("Unknown model or snapshot, or its dataset is not seeded"),
          409: documented("The model is still training; the problem links its job"),
          502: documented("A stored model file failed verification against its sha256")}


def responses(body: type, *, pending: bool = False) -> dict:
    """A route's JSON body (or PNG), its errors, and with `pending` the 202 of a result a worker computes."""
    ok = {200: {"model": body, "content": PNG, "description": "JSON, or with `format=png` a picture"}}
    waiting = {202: {"model": Pending, "description": "Computed by a worker meanwhile: ask again at `Location` "
                     "after `Retry-After` seconds"}} if pending else {}
    return {**ok, **waiting, **ERRORS}


Format = Literal["json", "png"]
Layer = Annotated[int, Query(ge=0, description="module index in the Sequential, 0-based")]
Data = Literal["cka", "test"]
Epoch = Annotated[int | None, Query(ge=0, description="a kept snapshot's epoch instead of the final model")]
BatchSize = Annotated[int, Query(ge=4, le=4096, description="data=test: images per minibatch")]


def _against(registry: RegistryDep, against: Annotated[str | None, Query(
        max_length=129, description="a second model's version, or `@alias`")] = None) -> str | None:
    return registry.resolve(against, field="against") if against is not None else None


@router.get("/{version}/cka", responses=responses(LayerCKA, pending=True), response_model=None)
def layer_cka(version: ModelVersion, analyses: AnalysesDep, against: Annotated[str | None, Depends(_against)],
              estimator: Literal["linear", "debiased"] | None = None, data: Data = "cka", epoch: Epoch = None,
              against_epoch: Epoch = None, batch_size: BatchSize = BATCH_SIZE, format: Format = "json") -> Response:
    """CKA between every pair of layers (`against=`: a second model's layers) on the CKA sample set, or on the whole
    test split (`data=test`: minibatch CKA with a bootstrap interval, computed by a worker: 202 until ready)."""
    estimator = estimator or ("debiased" if data == "test" else "linear")
    result = analyses.cka(version, estimator=estimator, against=against, epoch=epoch, against_epoch=against_epoch,
                          data=data, batch_size=batch_size)
    if format == "json":
        return JSONResponse(result)
    title = f"CKA ({estimator}{', test split' if data == 'test' else ''}): {version}" + (
        f" vs {against}" if against else "")
    # The debiased estimator can dip below 0; the colour bar then shows how far.
    low = min(0.0, *(min(row) for row in result["matrix"]))
    png = heatmap_png(result["matrix"], row_labels=result["layers"], title=title, vmin=low,
                      col_labels=result.get("other_layers", result["layers"]))
    return Response(png, media_type="image/png")


@router.get("/{version}/dynamics", responses=responses(Dynamics, pending=True), response_model=None)
def dynamics(version: ModelVersion, analyses: AnalysesDep, data: Data = "cka",
             estimator: Literal["linear", "debiased"] | None = None, batch_size: BatchSize = BATCH_SIZE,
             format: Format = "json") -> Response:
    """How each layer reached its final form: per layer and kept epoch, CKA to the same layer of the final model
    (needs snapshots). On the CKA set it is stored as the job ends; on the test split a worker computes it."""
    result = analyses.dynamics(version, data=data, estimator=estimator, batch_size=batch_size)
    if format == "json":
        return JSONResponse(result)
    low = min(0.0, *(min(row) for row in result["to_final"]))
    png = heatmap_png(result["to_final"], row_labels=result["layers"],
                      col_labels=[f"epoch {epoch}" for epoch in result["epochs"]], vmin=low,
                      title=f"CKA to the final model ({result['estimator']}, {data} data), layers × epochs: {version}")
    return Response(png, media_type="image/png")


@router.get("/{version}/activations", responses=responses(Activations), response_model=None)
def layer_activations(version: ModelVersion, analyses: AnalysesDep, layer: Layer,
                      sample: Annotated[int, Query(ge=0, description="index into the CKA sample set")],
                      epoch: Epoch = None, format: Format = "png") -> Response:
    """One CKA sample's feature maps at one layer: a grid of per-channel maps (`png`) or the values (`json`)."""
    result = analyses.activations(version, layer=layer, sample=sample, epoch=epoch)
    maps = result["maps"]
    if format == "json":
        fields = {key: value for key, value in result.items() if key != "maps"}
        return JSONResponse({**fields, "shape": list(maps.shape), "values": maps.tolist()})
    tiles = to_uint8_maps(maps)
    if tiles.shape[2] == 1:  # a flat layer: one strip
        tiles = tiles.expand(-1, -1, STRIP_ROWS, -1)
    return Response(_tile_grid(tiles), media_type="image/png")


@router.get("/{version}/top-images", responses=responses(TopImages), response_model=None)
def top_images(version: ModelVersion, analyses: AnalysesDep, layer: Layer,
               channel: Annotated[int, Query(ge=0, description="channel (or feature of a flat layer)")],
               k: Annotated[int, Query(ge=1, le=MAX_K)] = 9, epoch: Epoch = None, format: Format = "json") -> Response:
    """The k test-split images with the highest mean activation of one channel, highest first."""
    result = analyses.top_images(version, layer=layer, channel=channel, k=k, epoch=epoch)
    if format == "json":
        return JSONResponse({key: value for key, value in result.items() if key != "images"})
    return Response(_tile_grid(result["images"]), media_type="image/png")


def _tile_grid(tiles: torch.Tensor) -> bytes:
    """uint8 tiles in a near-square grid (ceil(sqrt(N)) per row), each scaled to about TILE_PX pixels."""
    scale = max(1, TILE_PX // max(tiles.shape[2:]))
    return grid_png(tiles, ncols=math.ceil(math.sqrt(len(tiles))), scale=scale)
