"""The job record (SPEC §5): its one typed definition, used by the queue, the API's schema, the worker and rebuild."""

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    resumed_from: dict[str, Any] | None = Field(
        None, description="`epoch` and `step` of the checkpoint this attempt started from; `exact` false when it "
        "resumed on another device, precision or thread count; `note` when a checkpoint was unusable")
    created_at: str
    started_at: str | None
    finished_at: str | None
