"""The job record (SPEC §5): its one typed definition, used by the queue, the API's schema, the worker and rebuild."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.storage import layout


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
    labels: dict[str, str]
    layers: list[dict[str, Any]]
    progress: Progress
    metrics: dict[str, float | None] | None
    history: list[dict[str, Any]]
    error: str | None
    attempts: int = Field(description="attempts started so far (a lost worker's job is resumed by another)")
    worker: dict[str, Any] | None = Field(None, description="host and pid of the attempt running now or last")
    stopped_early: dict[str, Any] | None = Field(
        None, description="`epoch` and `reason` when early stopping ended the job before its last epoch, else null")
    resumed_from: dict[str, Any] | None = Field(
        None, description="`epoch` and `step` of the checkpoint this attempt started from; `exact` false when it "
        "resumed on another device, precision or thread count; `note` when a checkpoint was unusable")
    created_at: str
    started_at: str | None
    finished_at: str | None


def record_of(row) -> dict[str, Any]:
    """The public job record (a `JobRecord`) of a `jobs` row."""
    return {name: getattr(row, name) for name in JobRecord.model_fields}


def new_record(*, version: str, dataset: str, request: dict, layers: list[dict], labels: dict[str, str]) -> dict:
    """The record of a freshly queued job."""
    return JobRecord(
        version=version, dataset=dataset, status="queued", request=request, labels=labels, layers=layers,
        progress=Progress(epoch=0, epochs=request["epochs"], step=0, steps=0, fraction=0.0),
        metrics=None, history=[], error=None, attempts=0, created_at=layout.utcnow(), started_at=None,
        finished_at=None).model_dump()


def job_row(record: JobRecord | dict) -> dict[str, Any]:
    """The `jobs` row of a job record that no worker holds (queued, or ended)."""
    return {**JobRecord.model_validate(record).model_dump(), "lost": 0, "lease_until": None,
            "cancel_requested": False, "revision": 1}
