"""Dashboard pages for models: the table, one model (layers, dynamics, CKA, activations, top images with a snapshot
slider, predict), compare."""

from functools import partial
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from starlette.datastructures import UploadFile

import models as networks
from app.analysis.maths import layer_names
from app.api.deps import AnalysesDep, DatasetsDep, RegistryDep, parse_label_filter
from app.api.downloads import model_file
from app.errors import Accepted, InvalidInput, NotFound
from app.registry import inference
from app.storage import layout
from app.ui.pictures import activation_pngs, image_png, symmetric_scale
from app.ui.rendering import PageRoute, render, safe_next

router = APIRouter(route_class=PageRoute)  # under /ui, each asking for the session first (app/ui/__init__.py)
PAGE_SIZE = 25
MAX_CHANNELS = 256  # maps shown per layer; a wider layer shows its first ones
TOP_K = 9


@router.get("/models")
def models_page(request: Request, registry: RegistryDep, sort: Literal["created_at", "test_accuracy"] = "created_at",
                dataset: Annotated[str, Query(max_length=64)] = "",
                label: Annotated[list[str], Query(max_length=16)] = (),
                cursor: Annotated[str | None, Query(max_length=1024)] = None) -> Response:
    """Stored models, sorted, filtered and paged by the URL; tick two to compare them."""
    labels = [item for item in label if item.strip()]
    items, after = registry.page(dataset=dataset or None, labels=parse_label_filter(labels), sort=sort,
                                 limit=PAGE_SIZE, cursor=cursor)
    return render(request, "models.html", items=items, next=after,
                  filters={"sort": sort, "dataset": dataset, "label": labels})


@router.get("/models/{version}")
def model_page(request: Request, version: str, registry: RegistryDep, datasets: DatasetsDep) -> Response:
    """Metrics, history, layers, aliases, and the analyses (fetched by htmx as the page opens)."""
    model = registry.get(registry.resolve(version))
    meta = model["meta"]
    _, labels, indices = datasets.cka_set(model["dataset"])
    samples = [{"index": i, "label": meta["classes"][int(y)], "test_index": int(t)}
               for i, (y, t) in enumerate(zip(labels, indices, strict=True))]
    return render(request, "model.html", model=model, meta=meta, layers=layer_table(meta),
                  samples=samples, snapshots=registry.snapshots(model["version"]))


def layer_table(meta: dict) -> list[dict]:
    """Each module of the network with its output shape and parameter count, run on the meta device."""
    rows = []
    with torch.device("meta"):
        net = networks.build_sequential(meta["layers"]).eval()
        x = torch.empty((1, *meta["input_shape"]))
        for name, spec, module in zip(layer_names(net), meta["layers"], net, strict=True):
            x = module(x)
            args = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type")
            rows.append({"name": name, "args": args, "shape": list(x.shape[1:]),
                         "parameters": sum(p.numel() for p in module.parameters())})
    return rows


@router.get("/models/{version}/download")
def download(version: str, request: Request, registry: RegistryDep) -> Response:
    """The model file, as `GET /models/{version}` sends it."""
    return model_file(registry.resolve(version), request, registry)


def _epoch(epoch: str) -> int | None:
    """The snapshot slider's epoch: empty for the final model."""
    if not epoch:
        return None
    if not epoch.isdigit():
        raise InvalidInput(f"epoch must be a whole number, got {epoch!r}", field="epoch")
    return int(epoch)


Epoch = Annotated[str, Query(max_length=6)]


@router.get("/models/{version}/cka")
def cka(request: Request, version: str, registry: RegistryDep, analyses: AnalysesDep,
        against: Annotated[str | None, Query(max_length=129)] = None, epoch: Epoch = "",
        data: Literal["cka", "test"] = "cka") -> Response:
    """The CKA heatmap (viridis, values on hover) and its numeric table, of the slider's snapshot; `against=`
    compares two models; `data=test` adds a heatmap of the interval's width (a worker computes it meanwhile)."""
    other = registry.resolve(against, field="against") if against else None
    try:
        result = analyses.cka(registry.resolve(version), estimator="debiased" if data == "test" else "linear",
                              against=other, epoch=_epoch(epoch), data=data)
    except Accepted as exc:
        return render(request, "_pending.html", what="CKA on the whole test split", job=exc.body, url=request.url)
    low = min(0.0, *(min(row) for row in result["matrix"]))
    widths = None
    if "ci" in result:
        widths = [[high - low_ for low_, high in zip(*pair, strict=True)]
                  for pair in zip(result["ci"]["low"], result["ci"]["high"], strict=True)]
    return render(request, "_cka.html", rows=result["layers"], columns=result.get("other_layers", result["layers"]),
                  matrix=result["matrix"], low=low, version=version, against=other, epoch=epoch, result=result,
                  widths=widths, widest=max((max(row) for row in widths), default=0.0) if widths else 0.0)


@router.get("/models/{version}/dynamics")
def dynamics(request: Request, version: str, registry: RegistryDep, analyses: AnalysesDep,
             data: Literal["cka", "test"] = "cka") -> Response:
    """The layers × epochs heatmap of each layer's CKA to its final self, values on hover and in a table."""
    try:
        result = analyses.dynamics(registry.resolve(version), data=data)
    except Accepted as exc:
        return render(request, "_pending.html", what="the dynamics on the whole test split", job=exc.body,
                      url=request.url)
    except NotFound as exc:
        return render(request, "_dynamics.html", missing=exc.detail, version=version)
    low = min(0.0, *(min(row) for row in result["to_final"]))
    return render(request, "_dynamics.html", result=result, low=low, version=version, missing=None)


@router.get("/models/{version}/activations")
def activations(request: Request, version: str, registry: RegistryDep, analyses: AnalysesDep, datasets: DatasetsDep,
                layer: Annotated[int, Query(ge=0)] = 0, sample: Annotated[int, Query(ge=0)] = 0,
                epoch: Epoch = "") -> Response:
    """One CKA sample's feature maps at one layer on a diverging map centred on zero; a channel links its top
    images."""
    version = registry.resolve(version)
    result = analyses.activations(version, layer=layer, sample=sample, epoch=_epoch(epoch))
    maps = result["maps"]
    maps = maps.reshape(-1, 1, 1) if maps.dim() == 1 else maps
    scale = symmetric_scale(maps)
    images = datasets.cka_set(registry.get(version)["dataset"])[0]
    channels = [{"channel": c, "png": png, "min": float(m.min()), "mean": float(m.mean()), "max": float(m.max())}
                for c, (png, m) in enumerate(zip(activation_pngs(maps[:MAX_CHANNELS], scale), maps, strict=False))]
    return render(request, "_activations.html", version=version, result=result, channels=channels, scale=scale,
                  total=len(maps), sample_png=image_png(images[sample]), epoch=epoch)


@router.get("/models/{version}/top-images")
def top_images(request: Request, version: str, registry: RegistryDep, analyses: AnalysesDep,
               layer: Annotated[int, Query(ge=0)], channel: Annotated[int, Query(ge=0)], epoch: Epoch = "") -> Response:
    """The test images that drive one channel highest."""
    version = registry.resolve(version)
    result = analyses.top_images(version, layer=layer, channel=channel, k=TOP_K, epoch=_epoch(epoch))
    classes = registry.get(version)["meta"]["classes"]
    tiles = [{"png": image_png(image), "index": index, "label": classes[label], "activation": value}
             for image, index, label, value in zip(result["images"], result["indices"], result["labels"],
                                                   result["activations"], strict=True)]
    return render(request, "_top_images.html", result=result, tiles=tiles)


@router.post("/models/{version}/predict")
async def predict(request: Request, version: str, registry: RegistryDep) -> Response:
    """Class probabilities of one drawn or uploaded image (the page scales it to the model's input size)."""
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("send the image as the multipart field `file`", field="file")
    blob = await upload.read()

    def classify() -> tuple[dict, list[str]]:
        resolved = registry.resolve(version)
        classes = registry.get(resolved)["meta"]["classes"]
        return registry.predict(resolved, partial(inference.decode_files, [blob]))[0], classes

    prediction, classes = await run_in_threadpool(classify)
    ranked = sorted(zip(classes, prediction["probabilities"], strict=True), key=lambda pair: -pair[1])
    return render(request, "_prediction.html", prediction=prediction, ranked=ranked)


@router.post("/models/{version}/aliases")
def put_alias(version: str, registry: RegistryDep, alias: Annotated[str, Form(max_length=128)]) -> Response:
    registry.put_alias(alias.strip(), registry.resolve(version))
    return RedirectResponse(f"/ui/models/{version}#aliases", status_code=303)


@router.post("/aliases/{alias}/delete")
def delete_alias(alias: str, registry: RegistryDep, next: Annotated[str, Form(max_length=2048)] = "/ui/models"
                 ) -> Response:
    registry.delete_alias(alias)
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/models/{version}/delete")
def delete_model(version: str, registry: RegistryDep, confirm: Annotated[str, Form(max_length=129)] = "") -> Response:
    """Delete after the version was typed again; 409 (shown as a page) while an alias names the model."""
    if confirm != version:
        raise InvalidInput(f"type the version {version!r} to confirm the deletion", field="confirm")
    registry.delete(layout.validate_version(version))
    return RedirectResponse("/ui/models", status_code=303)


@router.get("/compare")
def compare(request: Request, registry: RegistryDep, v: Annotated[list[str], Query(max_length=2)] = ()) -> Response:
    """Two models side by side: metrics, the request's differences only, overlaid histories, cross-model CKA."""
    if len(v) != 2:
        raise InvalidInput(f"tick exactly two models to compare ({len(v)} given)", field="v")
    a, b = (registry.get(registry.resolve(name)) for name in v)
    request_a, request_b = a["meta"].get("request") or {}, b["meta"].get("request") or {}
    keys = sorted((set(request_a) | set(request_b)) - {"version"})
    differences = [(key, request_a.get(key), request_b.get(key)) for key in keys
                   if request_a.get(key) != request_b.get(key)]
    sweep = a["labels"].get("sweep")  # two trials of one sweep: its seed floor goes beside their CKA
    return render(request, "compare.html", a=a, b=b, differences=differences,
                  sweep=sweep if sweep and sweep == b["labels"].get("sweep") else None)
