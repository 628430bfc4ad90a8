"""One attempt at a claimed job: load the data, train, checkpoint, publish the model, record how it ended."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from contextlib import suppress

import torch

import models
from app.analysis.jobs import store_dynamics
from app.datasets.service import DatasetService
from app.db.engine import Database
from app.errors import ServiceError, Unavailable
from app.jobs.checkpoints import Checkpoints, CheckpointWriter
from app.jobs.lease import JobCancelled, Lease
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.jobs.snapshots import Snapshots
from app.registry import publishing
from app.settings import Settings
from app.storage import layout
from app.storage.s3 import Store, store_from_settings
from app.sweeps.judge import trial_judge

log = logging.getLogger("scv.worker")
EXIT_LEASE_LOST, EXIT_UNAVAILABLE = 75, 69


def train_job(*, claim: Claim, settings: Settings, store: Store, queue: JobQueue) -> dict:
    """Train the job's network on its dataset, store the model, and return the final record."""
    version = claim.version
    request = queue.get(version)["request"]
    device = models.pick_device(settings.device)
    # The request records the precision this attempt trains in, `auto` resolved on this device.
    request = {**request, "precision": models.resolve_precision(request.get("precision") or settings.precision,
                                                                device, cpu_bf16=settings.cpu_bf16)}
    record = queue.start(claim, worker={"host": socket.gethostname(), "pid": os.getpid()}, request=request)
    checkpoints = Checkpoints(store=store, bucket=settings.minio_model_bucket, queue=queue)
    with Lease(queue=queue, claim=claim, record=record) as lease:
        datasets = DatasetService(store=store, settings=settings)
        manifest = datasets.manifest(record["dataset"])
        train_x, train_y = datasets.load_split(record["dataset"], "train")
        test_x, test_y = datasets.load_split(record["dataset"], "test")
        if request.get("train_subset"):
            # A seeded random subset: the first N samples of a sorted split would miss classes.
            pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(request["seed"]))
            pick = pick[: request["train_subset"]]
            train_x, train_y = train_x[pick], train_y[pick]
        lease.check()
        config = models.TrainConfig(
            epochs=request["epochs"], batch_size=request["batch_size"], optimizer=request["optimizer"],
            learning_rate=request["learning_rate"], momentum=request["momentum"],
            weight_decay=request["weight_decay"], seed=request["seed"], device=device,
            precision=request["precision"], checkpoint_every_s=settings.checkpoint_seconds, **_recipe(request))
        fingerprint = _fingerprint(record, manifest)
        setup = {"device": torch.device(device).type, "precision": config.precision,
                 "threads": torch.get_num_threads()}
        resume, resumed_from = checkpoints.load(version, fingerprint=fingerprint, setup=setup)
        lease.restart(history=resume.meta["history"] if resume else [], resumed_from=resumed_from)
        model = models.seeded_model(record["layers"], seed=request["seed"])
        normalization = {"mean": manifest["mean"], "std": manifest["std"]}

        def model_file(net: torch.nn.Module) -> bytes:  # the model's file, and each snapshot's
            return models.save_model(net, layers=record["layers"], input_shape=manifest["image_shape"],
                                     classes=manifest["classes"], normalization=normalization,
                                     dataset=record["dataset"], version=version)

        snapshots = Snapshots(store=store, bucket=settings.minio_model_bucket, version=version, lease=lease,
                              every=request.get("snapshot_every", 1),
                              model_file=model_file, resume=resume)
        with CheckpointWriter(checkpoints, claim, fingerprint) as save:
            result = models.train(model, train_images=train_x, train_labels=train_y, test_images=test_x,
                                  test_labels=test_y, mean=manifest["mean"], std=manifest["std"], config=config,
                                  on_progress=lease.update, resume=resume, on_checkpoint=snapshots.carried_by(save),
                                  on_weights=snapshots, judge=trial_judge(queue.db, version, epochs=config.epochs))

        blob = model_file(model)
        metadata = publishing.describe(
            blob, version=version, dataset=record["dataset"], request=request, labels=record["labels"],
            layers=record["layers"], metrics=result["metrics"], history=result["history"],
            snapshots=snapshots.entries,
            classes=manifest["classes"], normalization=normalization, input_shape=manifest["image_shape"],
            epochs=request["epochs"], num_parameters=sum(p.numel() for p in model.parameters()),
            dataset_sha256=manifest["sha256"], device=config.device, precision=config.precision,
            # whether the same request on this device repeats these weights bit for bit (CUDA: ops without one named)
            reproducible=result["reproducible"], nondeterministic=result["nondeterministic"],
            stopped_early=result["stopped_early"])
        lease.renew_now()  # a worker that lost its job must not overwrite the objects of the one that holds it
        publishing.store_objects(store, bucket=settings.minio_model_bucket, metadata=metadata, blob=blob)
        store_dynamics(store=store, bucket=settings.minio_model_bucket, version=version, final=model,
                       meta=metadata, entries=snapshots.entries, datasets=datasets,
                       max_bytes=settings.analysis_max_bytes)
    progress = {**lease.state["progress"], "fraction": 1.0}
    if not queue.finish(claim, "succeeded", metrics=result["metrics"], history=result["history"],
                        progress=progress, stopped_early=result["stopped_early"],
                        publish=lambda conn: publishing.list_models(conn, [metadata])):
        raise LeaseLost(version)
    checkpoints.discard(version)  # else housekeeping's sweep does it
    return queue.get(version)


def _recipe(request: dict) -> dict:
    """The request's recipe fields as TrainConfig takes them (a request of an earlier release has none of them)."""
    augment, stopping = request.get("augment"), request.get("early_stopping")
    return {"augment": models.Augment(**augment) if augment else None,
            "schedule": request.get("schedule", "constant"), "warmup_epochs": request.get("warmup_epochs", 0.0),
            "label_smoothing": request.get("label_smoothing", 0.0),
            "validation_split": request.get("validation_split", 0.0),
            "early_stopping": models.EarlyStoppingConfig(**stopping) if stopping else None}


def _fingerprint(record: dict, manifest: dict) -> str:
    """What a checkpoint must have been made for: the request (precision aside: see `setup`) and the data."""
    request = {k: v for k, v in record["request"].items() if k != "precision"}
    return hashlib.sha256(json.dumps([request, record["layers"], manifest["sha256"]], sort_keys=True).encode()
                          ).hexdigest()


def run(claim: Claim, settings: Settings, *, threads: int | None = None) -> int:
    """Run one attempt of a claimed job; record how it ended. Returns a process exit code."""
    if threads:
        torch.set_num_threads(threads)
    store = store_from_settings(settings)
    queue = job_queue(settings, store=store)
    try:
        if layout.is_analysis_job(claim.version):
            from app.analysis.jobs import analysis_job

            analysis_job(claim=claim, settings=settings, store=store, queue=queue)
        else:
            train_job(claim=claim, settings=settings, store=store, queue=queue)
        return 0
    except LeaseLost:
        log.warning("job %s: attempt %d lost its lease to another worker; stopping without changes",
                    claim.version, claim.attempt)
        return EXIT_LEASE_LOST
    except JobCancelled:
        _end(queue, claim, "cancelled", None, store=store, bucket=settings.minio_model_bucket)
        return 0
    except Unavailable as exc:  # storage or the catalog is away: not the job's fault, so another attempt runs it
        log.warning("job %s: attempt %d gives the job back: %s", claim.version, claim.attempt, exc.detail)
        with suppress(ServiceError):  # the catalog is away too: the lease lapses and a reaper takes the job back
            queue.release(claim, reason=exc.detail)
        return EXIT_UNAVAILABLE
    except Exception as exc:  # every failure becomes the job's recorded reason
        reason = exc.detail if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s", claim.version, reason)
        _end(queue, claim, "failed", reason, store=store, bucket=settings.minio_model_bucket)
        return 1


def _end(queue: JobQueue, claim: Claim, status: str, reason: str | None, *, store: Store, bucket: str,
         patience_s: float = 30.0) -> None:
    """Record a final status and remove partial objects, retrying while storage or the database is away."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if queue.finish(claim, status, error=reason) and not layout.is_analysis_job(claim.version):
                publishing.delete_objects(store, bucket=bucket, version=claim.version, snapshots=True)
                Checkpoints(store=store, bucket=bucket, queue=queue).discard(claim.version)
            return
        except ServiceError as exc:
            log.warning("job %s: could not record %s yet: %s", claim.version, status, exc.detail)
            if time.monotonic() > deadline:
                return  # the lease lapses and the job is taken back
            time.sleep(1.0)


def job_queue(settings: Settings, *, store: Store | None = None, db: Database | None = None) -> JobQueue:
    """The job queue on `db`, else on the catalog named by the settings; given `store`, a job that ends failed or
    cancelled through it loses its model objects there."""
    bucket = settings.minio_model_bucket
    on_end = None if store is None else publishing.ended_without_model(store, bucket=bucket)
    return JobQueue(db or Database(settings.catalog_url), lease_seconds=settings.lease_seconds,
                    max_attempts=settings.max_attempts, on_end=on_end)
