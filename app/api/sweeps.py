"""Sweep routes: submit a family of trials, follow it, page sweeps, cancel one."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import AnalysesDep, SweepsDep
from app.api.problems import BODY_RESPONSES, documented
from app.sweeps.record import SweepPage, SweepRecord, SweepSimilarity
from app.sweeps.request import SweepRequest
from app.sweeps.similarity import similarity

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
CONFLICT = {409: documented("Every trial of the sweep has ended already")}


@router.post("", status_code=201, response_model=SweepRecord, responses={
    **BODY_RESPONSES, 404: documented("Unknown or unseeded dataset in `base`")})
def create_sweep(body: SweepRequest, response: Response, sweeps: SweepsDep) -> dict:
    """Expand a sweep into trials and queue each as a training job (labels `sweep`, `trial`); 201 with
    `Location: /sweeps/{id}`."""
    record = sweeps.create(body)
    response.headers["Location"] = f"/sweeps/{record['id']}"
    return record


@router.get("", response_model=SweepPage)
def list_sweeps(sweeps: SweepsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                cursor: Annotated[str | None, Query(max_length=1024)] = None) -> dict:
    """Sweep records, newest first, a page at a time."""
    items, after = sweeps.page(limit=limit, cursor=cursor)
    return {"items": items, "next": after}


@router.get("/{sweep_id}", response_model=SweepRecord)
def get_sweep(sweep_id: str, sweeps: SweepsDep) -> dict:
    """One sweep: its trials (configuration, seed, status, metric, epochs run), the best one, ASHA's decisions."""
    return sweeps.get(sweep_id)


@router.delete("/{sweep_id}", response_model=SweepRecord, responses=CONFLICT)
def cancel_sweep(sweep_id: str, sweeps: SweepsDep) -> dict:
    """Cancel the sweep's unfinished trials, queued and running; the sweep ends `cancelled`."""
    return sweeps.cancel(sweep_id)


@router.get("/{sweep_id}/similarity", response_model=SweepSimilarity)
def seed_similarity(sweep_id: str, sweeps: SweepsDep, analyses: AnalysesDep) -> dict:
    """For each configuration trained with two or more seeds, the same-layer CKA between its replicates (mean, min
    and max over pairs, per layer, on the CKA set): the noise floor of a cross-model CKA."""
    return similarity(sweeps.get(sweep_id), analyses)
