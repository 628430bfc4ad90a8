"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import DatabaseDep, SettingsDep, StoreDep
from app.errors import ServiceError, StorageUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "storage or the catalog database unreachable"}})
def readyz(request: Request, store: StoreDep, settings: SettingsDep, db: DatabaseDep) -> dict:
    """200 when storage answers, both buckets exist (they are created if missing) and the catalog answers."""
    buckets = (settings.minio_model_bucket, settings.minio_dataset_bucket)
    try:
        store.ensure_buckets(*buckets)
    except ServiceError as exc:
        request.app.state.metrics.storage_ready.set(0)
        raise StorageUnavailable(exc.detail, endpoint=store.endpoint) from None
    request.app.state.metrics.storage_ready.set(1)
    db.ping()  # DatabaseUnavailable names the database, never its password
    return {"status": "ready", "endpoint": store.endpoint, "buckets": list(buckets), "database": db.shown}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4")
