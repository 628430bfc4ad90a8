"""Training routes: submit, inspect, follow (SSE) and cancel jobs."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.api.deps import DatasetsDep, JobsDep, SettingsDep
from app.api.labels import LabelFilter
from app.errors import ServiceError
from app.jobs.queue import STATUSES, TERMINAL, new_record
from app.jobs.record import JobRecord
from app.jobs.service import JobService, prepare
from app.storage.layout import VERSION_PATTERN

router = APIRouter(prefix="/train", tags=["training"])
EVENT_POLL_S = 0.5
LABEL_KEY = r"^[a-z0-9][a-z0-9._-]{0,62}$"
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=128, pattern=r"^[ -~]*$")]  # printable ASCII


class TrainRequest(BaseModel):
    """A network design and its hyperparameters (SPEC §5 Training)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(..., examples=["mnist"], max_length=64)
    version: str | None = Field(None, pattern=VERSION_PATTERN, examples=["mnist-baseline-1"])
    layers: list[dict[str, Any]] | None = Field(None, max_length=256, examples=[[
        {"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]])
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    train_subset: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None, description="training precision; absent: SCV_PRECISION. The precision used is recorded")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16,
                                               examples=[{"owner": "alice", "experiment": "lr-sweep"}])


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next` as `cursor` for the following page."""

    items: list[JobRecord]
    next: str | None


@router.post("", status_code=202, response_model=JobRecord)
def submit(body: TrainRequest, response: Response, jobs: JobsDep, datasets: DatasetsDep,
           settings: SettingsDep) -> dict:
    """Queue a training job; 202 with `Location: /train/{version}`."""
    manifest = datasets.manifest(body.dataset)
    request = body.model_dump(exclude={"labels"})
    request["precision"] = body.precision or settings.precision
    if body.train_subset is not None and body.train_subset > manifest["train_size"]:
        request["train_subset"] = None  # more than there is: train on everything
    version, layers = prepare(request, manifest=manifest)
    record = jobs.submit(new_record(version=version, dataset=body.dataset, request={**request, "version": version},
                                    layers=layers, labels=body.labels))
    response.headers["Location"] = f"/train/{version}"
    return record


@router.get("", response_model=JobPage)
def list_jobs(
    jobs: JobsDep,
    labels: LabelFilter,
    status: Annotated[Literal[STATUSES] | None, Query()] = None,
    dataset: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> dict:
    """Job records, newest first, a page at a time; filters `status`, `dataset`, `label=key:value` (repeatable)."""
    items, after = jobs.page(status=status, dataset=dataset, labels=labels, limit=limit, cursor=cursor)
    return {"items": items, "next": after}


@router.get("/{version}", response_model=JobRecord)
def get_job(version: str, jobs: JobsDep) -> dict:
    """One job record."""
    return jobs.get(version)


@router.delete("/{version}", response_model=JobRecord)
def cancel_job(version: str, jobs: JobsDep) -> dict:
    """Cancel a queued or running job: it ends `cancelled` and stores no model."""
    return jobs.cancel(version)


def _existing_job(version: str, jobs: JobsDep) -> JobService:
    jobs.get(version)  # 404 as problem+json, before the stream starts
    return jobs


@router.get("/{version}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(
    version: str,
    jobs: Annotated[JobService, Depends(_existing_job)],
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: the job record on every change (`id` = its revision), ending after a terminal status.
    A client reconnecting with `Last-Event-ID` receives only newer records."""
    seen = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    while True:
        try:
            record, revision = await run_in_threadpool(jobs.queue.get_with_revision, version)
        except ServiceError as exc:  # the stream has started: report in-band, the client may retry
            yield ServerSentEvent(event="error", data={"status": exc.status, "detail": exc.detail})
            return
        if revision > seen:
            seen = revision
            yield ServerSentEvent(event="job", id=str(revision), data=record)
        if record["status"] in TERMINAL:
            return
        await asyncio.sleep(EVENT_POLL_S)
