"""Dashboard pages for training: the jobs table, a new job's form, one job followed live, cancel."""

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

import models
from app.api.deps import DatasetsDep, ExistingJobDep, JobsDep, parse_label_filter
from app.api.problems import invalid_fields
from app.errors import InvalidInput, ServiceError
from app.jobs.queue import STATUSES, TERMINAL
from app.jobs.request import TrainRequest
from app.ui.rendering import PageRoute, is_htmx, render, safe_next

router = APIRouter(route_class=PageRoute)  # under /ui, each asking for the session first (app/ui/__init__.py)
PAGE_SIZE = 25
POLL_STOP = 286  # htmx stops polling on this status: nothing left that could change
LABEL_FILTERS = Annotated[list[str], Query(max_length=16)]
_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*(\[[^\]]*\]|\"[^\"]*\"|[^,]*)\s*(?:,|$)")
# Layer templates for the editor; a final Linear to the dataset's classes is appended when the last layer is not one.
LAYER_TEMPLATES = {
    "default": ("Default CNN", models.default_layers((1, 28, 28), 10)[:-1]),
    "small": ("Small CNN", [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
                            {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]),
    "mlp": ("Multilayer perceptron", [{"type": "Flatten"}, {"type": "Linear", "out_features": 64}, {"type": "ReLU"}]),
}
HYPERPARAMETERS = ("version", "epochs", "batch_size", "optimizer", "learning_rate", "momentum", "weight_decay",
                   "seed", "train_subset", "precision", "schedule", "warmup_epochs", "label_smoothing",
                   "validation_split", "snapshot_every")
RECIPE = ("shift", "flip", "cutout", "stop_metric", "patience", "restore_best")  # the form's names of nested fields
# "Strong" recipes per dataset (random shifts, a one-cycle schedule, label smoothing; flips only where a mirrored
# image is still its class), after the README's measurements on MNIST and airbench's on CIFAR-10.
_STRONG = {"epochs": "15", "learning_rate": "0.004", "schedule": "onecycle", "label_smoothing": "0.1",
           "validation_split": "0.1", "shift": "2"}
RECIPES = {"mnist": _STRONG, "emnist": _STRONG, "svhn": _STRONG, "fashion_mnist": {**_STRONG, "flip": "on"},
           "cifar10": {**_STRONG, "epochs": "20", "flip": "on", "label_smoothing": "0.2"}}


@router.get("")
def jobs_page(request: Request, jobs: JobsDep, status: str = "", dataset: Annotated[str, Query(max_length=64)] = "",
              label: LABEL_FILTERS = (), cursor: Annotated[str | None, Query(max_length=1024)] = None) -> Response:
    """Jobs, newest first, filtered by the URL; htmx re-fetches the table while a job on it can still change."""
    if status and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}; one of {', '.join(STATUSES)}", field="status")
    labels = parse_label_filter([item for item in label if item.strip()])
    items, after = jobs.page(status=status or None, dataset=dataset or None, labels=labels, limit=PAGE_SIZE,
                             cursor=cursor)
    live = any(item["status"] not in TERMINAL for item in items)
    if is_htmx(request):
        return render(request, "_jobs_table.html", status_code=200 if live else POLL_STOP, items=items, next=after)
    return render(request, "jobs.html", items=items, next=after, live=live, statuses=STATUSES,
                  filters={"status": status, "dataset": dataset, "label": [item for item in label if item]})


@router.get("/jobs/new")
def new_job_form(request: Request, datasets: DatasetsDep, template: str = "default",
                 dataset: Annotated[str, Query(max_length=64)] = "", recipe: Literal["plain", "strong"] = "plain"
                 ) -> Response:
    """The form, its layer editor prefilled from a template, and the plain recipe or the dataset's strong one."""
    layers = LAYER_TEMPLATES.get(template, LAYER_TEMPLATES["default"])[1]
    rows = [{"type": spec["type"], "args": layer_args(spec)} for spec in layers]
    strong = RECIPES.get(dataset or "mnist", _STRONG) if recipe == "strong" else {}
    return _form(request, datasets, values={"dataset": dataset, "template": template, "recipe": recipe, **strong},
                 rows=rows, errors={})


@router.post("/jobs/new")
async def submit_job(request: Request, jobs: JobsDep, datasets: DatasetsDep) -> Response:
    """Queue the job as `POST /train` does; a 422 comes back as the form with each message at its field."""
    form = await request.form()
    values = {key: str(form.get(key, "")).strip() for key in ("dataset", "labels", *HYPERPARAMETERS, *RECIPE)}
    rows = [{"type": str(kind), "args": str(args)}
            for kind, args in zip(form.getlist("layer_type"), form.getlist("layer_args"), strict=False)]
    try:
        version = await run_in_threadpool(_submit, values, rows, jobs=jobs)
    except ValidationError as exc:  # every field at once, as the API's 422 lists them
        errors = {e["field"]: e["message"] for e in invalid_fields(exc.errors())[1]}
    except ServiceError as exc:
        if exc.status not in (404, 409, 422):
            raise
        errors = {e["field"]: e["message"] for e in exc.extra.get("errors", [])}
        field = exc.extra.get("field") or {404: "dataset", 409: "version"}.get(exc.status, "form")
        errors.setdefault(field, exc.detail)
    else:
        return RedirectResponse(f"/ui/jobs/{version}", status_code=303)
    return _form(request, datasets, values=values, rows=rows, errors=errors, status_code=422)


def _submit(values: dict, rows: list[dict], *, jobs) -> str:
    body: dict[str, Any] = {key: values[key] for key in ("dataset", *HYPERPARAMETERS) if values.get(key)}
    body["layers"] = [{"type": row["type"], **parse_args(index, row["args"])} for index, row in enumerate(rows)]
    body["labels"] = parse_labels(values.get("labels", ""))
    if any(values.get(key) not in (None, "", "0") for key in ("shift", "flip", "cutout")):
        body["augment"] = {"shift": values.get("shift") or 0, "flip": bool(values.get("flip")),
                           "cutout": values.get("cutout") or 0}
    if values.get("stop_metric"):
        body["early_stopping"] = {"metric": values["stop_metric"], "patience": values.get("patience") or 5,
                                  "restore_best": bool(values.get("restore_best"))}
    return jobs.submit(TrainRequest.model_validate(body))["version"]


def _form(request: Request, datasets, *, values: dict, rows: list[dict], errors: dict,
          status_code: int = 200) -> Response:
    """The form; each error sits at its field, a layer's at its row (field `layers[i]`)."""
    shown, at_layer = {}, {}
    for field, message in errors.items():
        layer = re.match(r"layers\[(\d+)\]", field)
        if layer and int(layer[1]) < len(rows):
            at_layer.setdefault(int(layer[1]), message)
        else:
            name = re.split(r"[.\[]", field)[0]
            known = ("dataset", "labels", "layers", "augment", "early_stopping", *HYPERPARAMETERS)
            shown.setdefault(name if name in known else "form", message)
    return render(request, "new_job.html", status_code=status_code, values=values, rows=rows, errors=shown,
                  layer_errors=at_layer,
                  datasets=[d for d in datasets.list() if d["seeded"]], layer_types=list(models.layers.LAYER_TYPES),
                  templates={key: name for key, (name, _) in LAYER_TEMPLATES.items()})


def layer_args(spec: dict) -> str:
    """A layer's arguments as the editor shows them: `out_channels=32, kernel_size=3`."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in spec.items() if key != "type")


def parse_args(index: int, text: str) -> dict[str, Any]:
    """`key=value, ...` (values as JSON, or bare words as strings) → the layer's arguments."""
    args, position, text = {}, 0, text.strip()
    while position < len(text):
        match = _ARG.match(text, position)
        if not match or match.end() == position:
            raise InvalidInput(f"cannot read the arguments after {text[position:position + 20]!r}: write them as "
                               "key=value, separated by commas (e.g. out_channels=8, kernel_size=3)",
                               field=f"layers[{index}]")
        try:
            args[match[1]] = json.loads(match[2])
        except ValueError:
            args[match[1]] = match[2].strip()
        position = match.end()
    return args


def parse_labels(text: str) -> dict[str, str]:
    """One `key=value` per line → the job's labels."""
    labels = {}
    for line in filter(None, (line.strip() for line in text.splitlines())):
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidInput(f"label line {line[:40]!r} has no '=': write key=value, one per line", field="labels")
        labels[key.strip()] = value.strip()
    return labels


@router.get("/jobs/{version}")
def job_page(request: Request, version: str, jobs: JobsDep) -> Response:
    """One job: status, progress and curves, kept live over Server-Sent Events until it ends."""
    return render(request, "_job_summary.html" if is_htmx(request) else "job.html", job=jobs.get(version))


@router.get("/jobs/{version}/events", response_class=EventSourceResponse)
async def job_events(version: str, jobs: ExistingJobDep,
                     last_event_id: Annotated[str | None, Header(max_length=32)] = None
                     ) -> AsyncIterator[ServerSentEvent]:
    """The API's event stream of one job, for the page's session (the API itself wants a bearer token)."""
    async for event in jobs.events(version, last_event_id=last_event_id):
        yield ServerSentEvent(event=event.event, id=event.id, data=event.data)


@router.post("/jobs/{version}/cancel")
async def cancel_job(request: Request, version: str, jobs: JobsDep) -> Response:
    await run_in_threadpool(jobs.cancel, version)
    back = (await request.form()).get("next")
    return RedirectResponse(safe_next(back if isinstance(back, str) else f"/ui/jobs/{version}"), status_code=303)
