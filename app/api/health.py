"""Liveness, readiness and Prometheus metrics."""

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import DatabaseDep, SettingsDep, StoreDep
from app.api.problems import documented
from app.api.schemas import Health, Readiness
from app.errors import NotReady, ServiceError

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
OPEN_API = "SCV_API_TOKEN is unset and SCV_ALLOW_NO_TOKEN=1: anyone who reaches this service can use it"


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True, responses={
    503: documented("Storage or the catalog database unreachable; `dependency` says which")})
def readyz(request: Request, store: StoreDep, settings: SettingsDep, db: DatabaseDep) -> dict:
    """200 when storage answers, both buckets exist (they are created if missing) and the catalog answers; else 503
    naming which of the two failed. Open to anyone, so it never says where they are or who connects."""
    try:
        store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
    except ServiceError as exc:
        request.app.state.metrics.storage_ready.set(0)
        log.warning("not ready: %s", exc.detail)  # the log, for operators, says where
        raise NotReady("storage") from None
    request.app.state.metrics.storage_ready.set(1)
    try:
        db.ping()
    except ServiceError as exc:
        log.warning("not ready: %s", exc.detail)
        raise NotReady("database") from None
    return {"status": "ready", **({"warning": OPEN_API} if settings.api_token is None and settings.allow_no_token
                                  else {})}


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4")
