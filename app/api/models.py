"""Model routes: pages, download (ETag, Range, HEAD), metadata, delete and predict; `@alias` for any version."""

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import LabelFilter, ModelRoute, ModelVersion, RegistryDep
from app.api.downloads import model_file, snapshot_file
from app.api.problems import BODY_RESPONSES, documented
from app.api.schemas import ImagesBody, ModelMetadata, ModelPage, Predictions, SnapshotList
from app.errors import InvalidInput, ServiceError
from app.registry import inference

router = APIRouter(prefix="/models", tags=["models"], route_class=ModelRoute)


class UnsupportedMediaType(ServiceError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "PNG or JPEG images of the model's height and width"}}}},
    "application/json": {"schema": ImagesBody.model_json_schema()},
}}}
TRAINING = {409: documented("The model is still training (the problem links its job)")}
UNVERIFIED = {502: documented("The stored model file failed verification against its sha256; it is not served")}
FILE = {"content": {"application/octet-stream": {}}}
DOWNLOAD_RESPONSES = {200: {**FILE, "description": "the model file"}, 206: {**FILE, "description": "a byte range"},
                      304: {"description": "not modified"}, **TRAINING, **UNVERIFIED,
                      416: documented("The range lies outside the file")}


@router.get("", response_model=ModelPage)
def list_models(registry: RegistryDep, labels: LabelFilter, dataset: Annotated[str | None, Query(max_length=64)] = None,
                sort: Annotated[Literal["created_at", "test_accuracy"], Query(description="descending")] = "created_at",
                limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                cursor: Annotated[str | None, Query(max_length=1024)] = None) -> dict:
    """Stored, unexpired models, newest (or most accurate) first, a page at a time; filters `dataset`,
    `label=key:value` (repeatable)."""
    items, after = registry.page(dataset=dataset, labels=labels, sort=sort, limit=limit, cursor=cursor)
    return {"items": items, "next": after}


@router.get("/{version}", response_class=StreamingResponse, responses=DOWNLOAD_RESPONSES)
@router.head("/{version}", response_class=StreamingResponse, responses=DOWNLOAD_RESPONSES)
def download(version: ModelVersion, request: Request, registry: RegistryDep) -> Response:
    """The model file, from the local cache when it holds it (a `Range` fetches it there first), else streamed
    from storage; ETag = sha256, `Range` → 206, `If-None-Match` → 304."""
    return model_file(version, request, registry)


@router.get("/{version}/snapshots", response_model=SnapshotList, responses=TRAINING)
def snapshots(version: ModelVersion, registry: RegistryDep) -> dict:
    """The model's snapshots, epoch 0 (initialisation) first: size, sha256 and that epoch's history entry."""
    return {"items": registry.snapshots(version)}


@router.get("/{version}/snapshots/{epoch}", response_class=StreamingResponse, responses=DOWNLOAD_RESPONSES)
@router.head("/{version}/snapshots/{epoch}", response_class=StreamingResponse, responses=DOWNLOAD_RESPONSES)
def snapshot(version: ModelVersion, epoch: Annotated[int, Path(ge=0, le=100)], request: Request,
             registry: RegistryDep) -> Response:
    """The model file of the snapshot of `epoch`, sent as the model's download is (ETag, `Range`, `HEAD`, 304);
    404 for an epoch not kept."""
    return snapshot_file(version, epoch, request, registry)


@router.get("/{version}/metadata", response_model=ModelMetadata, responses=TRAINING)
def metadata(version: ModelVersion, registry: RegistryDep) -> dict[str, Any]:
    """The model's request, resolved layers, metrics, history, classes, normalization, libraries, sha256."""
    return registry.metadata(version)


@router.delete("/{version}", status_code=204, response_class=Response, responses={
    409: documented("Its training job is queued or running, or an alias names it (the problem lists them)")})
def delete(version: ModelVersion, registry: RegistryDep) -> Response:
    """Delete the model, its job record and every object under its version; 409 while its job is queued or
    running or while an alias names it."""
    registry.delete(version)
    return Response(status_code=204)


@router.post("/{version}/predict", response_model=Predictions, openapi_extra=PREDICT_BODY, responses={
    **BODY_RESPONSES, **TRAINING, **UNVERIFIED, 415: documented("Neither multipart/form-data nor application/json")})
async def predict(version: ModelVersion, request: Request, registry: RegistryDep) -> dict:
    """Classify images: multipart PNG/JPEG `files`, or JSON `{"images": [...]}` of uint8 arrays."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async with request.form(max_files=4 * inference.MAX_IMAGES) as form:
            parts = form.getlist("files")
            if not all(isinstance(part, UploadFile) for part in parts):
                raise InvalidInput("field `files` must hold uploaded PNG/JPEG files, not text", field="files")
            blobs = [await part.read() for part in parts]
        decode = partial(inference.decode_files, blobs)
    elif kind == "application/json":
        try:
            body = ImagesBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        decode = partial(inference.decode_arrays, body.images)
    else:
        raise UnsupportedMediaType(f"send multipart/form-data (field `files`) or application/json, not "
                                   f"{kind or 'no content type'}")
    return {"predictions": await run_in_threadpool(registry.predict, version, decode)}
