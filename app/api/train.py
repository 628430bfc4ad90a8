"""Training routes: submit, inspect, follow (SSE) and cancel jobs."""

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import DatasetsDep, JobsDep
from app.errors import ServiceError
from app.jobs.service import STATUSES, TERMINAL, new_record, prepare
from app.storage.layout import VERSION_PATTERN

router = APIRouter(prefix="/train", tags=["training"])
EVENT_POLL_S = 0.5


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


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps: int
    fraction: float


class JobRecord(BaseModel):
    """A training job; its version is the version of the model it produces."""

    version: str
    dataset: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any]
    layers: list[dict[str, Any]]
    progress: Progress
    metrics: dict[str, float | None] | None
    history: list[dict[str, Any]]
    error: str | None
    worker: dict[str, Any] | None = Field(None, description="host and pid of the process running the job")
    created_at: str
    started_at: str | None
    finished_at: str | None


@router.post("", status_code=202, response_model=JobRecord)
def submit(body: TrainRequest, response: Response, jobs: JobsDep, datasets: DatasetsDep) -> dict:
    """Queue a training job; 202 with `Location: /train/{version}`."""
    manifest = datasets.manifest(body.dataset)
    request = body.model_dump()
    if body.train_subset is not None and body.train_subset > manifest["train_size"]:
        request["train_subset"] = None  # more than there is: train on everything
    version, layers = prepare(request, manifest=manifest)
    record = jobs.submit(new_record(version=version, dataset=body.dataset,
                                    request={**request, "version": version}, layers=layers))
    response.headers["Location"] = f"/train/{version}"
    return record


@router.get("", response_model=list[JobRecord])
def list_jobs(jobs: JobsDep, status: Annotated[Literal[STATUSES] | None, Query()] = None) -> list[dict]:
    """Job records, newest first; `status=` filters."""
    return jobs.list(status)


@router.get("/{version}", response_model=JobRecord)
def get_job(version: str, jobs: JobsDep) -> dict:
    """One job record."""
    return jobs.get(version)


@router.delete("/{version}", response_model=JobRecord)
def cancel_job(version: str, jobs: JobsDep) -> dict:
    """Cancel a queued or running job: it ends `cancelled` and stores no model."""
    return jobs.cancel(version)


@router.get("/{version}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(version: str, jobs: JobsDep) -> StreamingResponse:
    """Server-Sent Events: the job record on every change, ending after a terminal status."""
    first = await run_in_threadpool(jobs.get, version)

    async def stream():
        record, last = first, None
        while True:
            text = json.dumps(record)
            if text != last:
                last = text
                yield f"event: job\ndata: {text}\n\n"
            if record["status"] in TERMINAL:
                return
            await asyncio.sleep(EVENT_POLL_S)
            try:
                record = await run_in_threadpool(jobs.get, version)
            except ServiceError as exc:  # the stream has started: report in-band, the client may retry
                yield f"event: error\ndata: {json.dumps({'status': exc.status, 'detail': exc.detail})}\n\n"
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
