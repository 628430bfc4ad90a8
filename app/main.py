"""The app factory: assembles settings, storage, services, guards and routers; nothing else."""

import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import ui
from app.analysis.service import Analyses
from app.api import aliases, health, models, openapi, problems, sweeps, train
from app.api import analysis as analysis_api
from app.api import datasets as datasets_api
from app.api.guards import BearerAuth, BodyLimit, LoopbackHosts
from app.datasets.service import DatasetService
from app.db.engine import Database
from app.errors import ServiceError
from app.jobs.attempt import job_queue
from app.jobs.checkpoints import Checkpoints
from app.jobs.local import LocalPool
from app.jobs.queue import JobQueue
from app.jobs.service import Executor, JobService
from app.metrics import Metrics
from app.registry.service import ModelRegistry
from app.settings import Settings, get_settings
from app.storage import embedded
from app.storage.s3 import Store
from app.sweeps.service import SweepService

log = logging.getLogger("scv")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; storage connects (or the embedded server starts) in the lifespan."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.api_token is None:
            log.warning("SCV_API_TOKEN is unset: the API is open to anyone who can reach it%s",
                        " (SCV_ALLOW_NO_TOKEN=1)" if settings.allow_no_token else "")
        with embedded.connect(settings) as (store, resolved):
            app.state.settings, app.state.store, app.state.metrics = resolved, store, metrics
            try:
                store.ensure_buckets(resolved.minio_model_bucket, resolved.minio_dataset_bucket)
            except ServiceError as exc:
                log.warning("storage not ready at start-up (%s); /readyz retries", exc.detail)
            app.state.db = db = Database(resolved.catalog_url)
            db.migrate()
            app.state.registry = ModelRegistry(store=store, settings=resolved, db=db)
            app.state.datasets = DatasetService(store=store, settings=resolved)
            app.state.jobs = job_service(resolved, store=store, db=db, datasets=app.state.datasets,
                                         housekeeping=[app.state.registry.finish_deletions])
            app.state.jobs.start()
            app.state.sweeps = SweepService(jobs=app.state.jobs, db=db)
            app.state.analyses = Analyses(registry=app.state.registry, datasets=app.state.datasets, store=store,
                                          bucket=resolved.minio_model_bucket, max_bytes=resolved.analysis_max_bytes,
                                          queue_job=app.state.jobs.analyse)
            app.state.registry.apply_retention()
            try:
                yield
            finally:
                app.state.jobs.stop()
                app.state.registry.close()
                db.dispose()

    app = FastAPI(title="SCV Trainer", version="0.1.0", lifespan=lifespan, responses=problems.PROBLEM_RESPONSES,
                  exception_handlers=problems.HANDLERS,
                  description="Train Sequential CNNs in the background; keep versioned models in S3.")
    for part in (health, train, sweeps, models, aliases, datasets_api, analysis_api, ui):
        app.include_router(part.router)
    app.openapi = lambda: openapi.document(app)
    app.mount(ui.STATIC_PATH, StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_token is not None:
        app.add_middleware(BearerAuth, token=settings.api_token.get_secret_value())
    app.add_middleware(LoopbackHosts, allowed=settings.allowed_hosts)
    app.add_middleware(metrics.middleware)
    return app


def job_service(settings: Settings, *, store: Store, db: Database, datasets: DatasetService | None = None,
                housekeeping: Sequence[Callable[[], object]] = ()) -> JobService:
    """The job service of `scv serve` and `scv worker`: the queue, this process's executor, the datasets jobs are
    checked against, and housekeeping (lapsed leases, checkpoints of ended jobs, and whatever else the caller adds)."""
    queue = job_queue(settings, store=store, db=db)
    checkpoints = Checkpoints(store=store, bucket=settings.minio_model_bucket, queue=queue)
    return JobService(queue=queue, executor=make_executor(settings, queue),
                      datasets=datasets or DatasetService(store=store, settings=settings), precision=settings.precision,
                      max_bytes=settings.analysis_max_bytes,
                      housekeeping=[queue.reap, checkpoints.sweep, *housekeeping])


def make_executor(settings: Settings, queue: JobQueue) -> Executor | None:
    """The executor named by SCV_EXECUTOR; None when this process trains nothing (SCV_MAX_CONCURRENT_JOBS=0)."""
    if settings.max_concurrent_jobs == 0:
        return None
    if settings.executor == "ray":
        from app.jobs.ray_cluster import RayDispatcher  # plain HTTP: the API needs no `ray` package

        return RayDispatcher(settings, queue)
    return LocalPool(queue=queue, env=settings.to_env(), slots=settings.max_concurrent_jobs)
