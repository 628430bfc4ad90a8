"""Training routes: submit, inspect, follow (SSE) and cancel jobs."""

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.deps import ExistingJobDep, JobsDep, LabelFilter
from app.api.problems import BODY_RESPONSES, documented
from app.api.schemas import JobPage
from app.jobs.queue import STATUSES
from app.jobs.record import JobRecord
from app.jobs.request import TrainRequest

router = APIRouter(prefix="/train", tags=["training"])


@router.post("", status_code=202, response_model=JobRecord, responses={
    **BODY_RESPONSES, 404: documented("Unknown or unseeded dataset"),
    409: documented("The version is already used (or its model is still being deleted)")})
def submit(body: TrainRequest, response: Response, jobs: JobsDep) -> dict:
    """Queue a training job; 202 with `Location: /train/{version}`."""
    record = jobs.submit(body)
    response.headers["Location"] = f"/train/{record['version']}"
    return record


@router.get("", response_model=JobPage)
def list_jobs(jobs: JobsDep, labels: LabelFilter, status: Annotated[Literal[STATUSES] | None, Query()] = None,
              dataset: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              cursor: Annotated[str | None, Query(max_length=1024)] = None) -> dict:
    """Job records, newest first, a page at a time; filters `status`, `dataset`, `label=key:value` (repeatable)."""
    items, after = jobs.page(status=status, dataset=dataset, labels=labels, limit=limit, cursor=cursor)
    return {"items": items, "next": after}


@router.get("/{version}", response_model=JobRecord)
def get_job(version: str, jobs: JobsDep) -> dict:
    """One job record."""
    return jobs.get(version)


@router.delete("/{version}", response_model=JobRecord,
               responses={409: documented("The job has already ended: nothing to cancel")})
def cancel_job(version: str, jobs: JobsDep) -> dict:
    """Cancel a queued or running job: it ends `cancelled` and stores no model."""
    return jobs.cancel(version)


@router.get("/{version}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(version: str, jobs: ExistingJobDep,
                     last_event_id: Annotated[str | None, Header(max_length=32)] = None
                     ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: the job record on every change (`id` = its revision), ending after a terminal status.
    A client reconnecting with `Last-Event-ID` receives only newer records."""
    async for event in jobs.events(version, last_event_id=last_event_id):
        yield ServerSentEvent(event=event.event, id=event.id, data=event.data)
