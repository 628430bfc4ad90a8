"""Analyses computed by workers: an analysis job's attempt, and the dynamics a training job stores as it ends."""

from __future__ import annotations

import logging
import os
import socket

import models
from app.analysis.service import Analyses, dynamics, dynamics_spec, result_key
from app.datasets.service import DatasetService
from app.errors import ServiceError
from app.jobs.lease import Lease
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.registry import publishing
from app.registry.service import ModelRegistry
from app.settings import Settings
from app.storage import layout
from app.storage.s3 import Store

log = logging.getLogger("scv.worker")


def analysis_job(*, claim: Claim, settings: Settings, store: Store, queue: JobQueue) -> dict:
    """Compute the analysis the job names, store its result under its key, and end the job (its row goes: the
    stored result is the answer from now on)."""
    record = queue.start(claim, worker={"host": socket.gethostname(), "pid": os.getpid()},
                         request=queue.get(claim.version)["request"])
    spec, digest = record["request"]["analysis"], claim.version.removeprefix(layout.ANALYSIS_JOB)
    registry = ModelRegistry(store=store, settings=settings, db=queue.db)
    analyses = Analyses(registry=registry, datasets=DatasetService(store=store, settings=settings), store=store,
                        bucket=settings.minio_model_bucket, max_bytes=settings.analysis_max_bytes)
    try:
        with Lease(queue=queue, claim=claim, record=record) as lease:
            if analyses.key(spec) != digest:  # a model or dataset it depends on was replaced since it was asked for
                raise ServiceError("what the analysis depends on changed since it was asked for; ask again")
            result = analyses.compute(spec)
            lease.renew_now()  # a worker that lost its job must not store over the one that holds it
            analyses.store_result(spec, digest, result)
    finally:
        registry.close()
    if not queue.finish(claim, "succeeded", progress={**record["progress"], "fraction": 1.0}):
        raise LeaseLost(claim.version)
    queue.forget(claim.version)
    return record


def store_dynamics(*, store: Store, bucket: str, version: str, final, meta: dict, entries: list[dict],
                   datasets: DatasetService, max_bytes: int) -> None:
    """A training job that kept snapshots stores its dynamics on the CKA set (the default estimator) before its
    model is listed, so that it is ready with the model; a failure is logged (a later request computes it)."""
    if not entries:
        return
    spec = dynamics_spec(version, data="cka", estimator="linear", batch_size=0)
    try:
        manifest = datasets.manifest(meta["dataset"])
        digest = result_key(spec, [meta["sha256"]] + [entry["sha256"] for entry in entries], manifest=manifest)
        device = next(final.parameters()).device
        nets = ((entry, models.load_model(store.get_bytes(bucket=bucket, key=layout.snapshot_key(version, entry[
            "epoch"]))).to(device)) for entry in entries)
        result = dynamics(nets, final, meta, datasets.cka_set(meta["dataset"])[0], data="cka", estimator="linear",
                          batch_size=None, max_bytes=max_bytes)
        publishing.store_analysis(store, bucket=bucket, version=version, digest=digest, result=result)
    except (ServiceError, ValueError) as exc:
        log.warning("job %s: dynamics not stored with the model (a request computes them): %s", version, exc)
