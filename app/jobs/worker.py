"""The training worker: one job, start to finish, in its own process (local child or Ray job)."""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from importlib.metadata import version as package_version
from pathlib import Path

import torch

import models
from app.datasets.service import DatasetService
from app.errors import ServiceError
from app.jobs.service import TERMINAL, JobRecords
from app.settings import Settings, load_settings
from app.storage import layout
from app.storage.s3 import Store, store_from_settings

log = logging.getLogger("scv.worker")
PROGRESS_INTERVAL_S = 0.5


class ProgressWriter:
    """Throttles progress updates of a running job's record to about two writes a second."""

    def __init__(self, *, records: JobRecords, record: dict):
        self.records, self.record, self._last = records, record, 0.0

    def __call__(self, progress: dict) -> None:
        done = progress.pop("epoch_done", None)
        self.record["progress"] = {k: progress[k] for k in ("epoch", "epochs", "step", "steps", "fraction")}
        self.record["metrics"] = {"train_loss": progress["train_loss"],
                                  "train_accuracy": progress["train_accuracy"],
                                  **({"test_loss": done["test_loss"], "test_accuracy": done["test_accuracy"]}
                                     if done else {k: (self.record["metrics"] or {}).get(k)
                                                   for k in ("test_loss", "test_accuracy")})}
        if done:
            self.record["history"] = [*self.record["history"], done]
        now = time.monotonic()
        if done or now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self.records.put(self.record)


def train_job(*, version: str, settings: Settings, store: Store) -> dict:
    """Train the job's network on its dataset, store the model, and return the final record."""
    records = JobRecords(store=store, bucket=settings.minio_model_bucket)
    record = records.get(version)
    if record["status"] in TERMINAL:
        return record  # cancelled (or ended) before this worker started: nothing to do
    request = record["request"]
    record.update(status="running", started_at=layout.utcnow(), error=None,
                  worker={"host": socket.gethostname(), "pid": os.getpid()})
    records.put(record)

    datasets = DatasetService(store=store, settings=settings)
    manifest = datasets.manifest(record["dataset"])
    train_x, train_y = datasets.load_split(record["dataset"], "train")
    test_x, test_y = datasets.load_split(record["dataset"], "test")
    if request.get("train_subset"):
        # A seeded random subset: the first N samples of a sorted split would miss classes.
        pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(request["seed"]))
        pick = pick[: request["train_subset"]]
        train_x, train_y = train_x[pick], train_y[pick]

    config = models.TrainConfig(
        epochs=request["epochs"], batch_size=request["batch_size"], optimizer=request["optimizer"],
        learning_rate=request["learning_rate"], momentum=request["momentum"],
        weight_decay=request["weight_decay"], seed=request["seed"], device=models.pick_device(settings.device))
    model = models.seeded_model(record["layers"], seed=request["seed"])
    result = models.train(model, train_images=train_x, train_labels=train_y, test_images=test_x,
                          test_labels=test_y, mean=manifest["mean"], std=manifest["std"], config=config,
                          on_progress=ProgressWriter(records=records, record=record))

    normalization = {"mean": manifest["mean"], "std": manifest["std"]}
    blob = models.save_model(model, layers=record["layers"], input_shape=manifest["image_shape"],
                             classes=manifest["classes"], normalization=normalization,
                             dataset=record["dataset"], version=version)
    finished = layout.utcnow()
    metadata = {
        "version": version, "dataset": record["dataset"], "created_at": finished,
        "request": request, "layers": record["layers"], "metrics": result["metrics"],
        "history": result["history"], "classes": manifest["classes"], "normalization": normalization,
        "input_shape": manifest["image_shape"], "epochs": request["epochs"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
        "dataset_sha256": manifest["sha256"], "device": config.device,
        "libraries": {name: package_version(name) for name in ("torch", "safetensors", "scv-trainer")},
    }
    # Metadata first, model last: a listed model always has its metadata, and a model object
    # exists only once it is complete.
    store.put_json(bucket=settings.minio_model_bucket, key=layout.key(version, layout.METADATA_FILE),
                   value=metadata)
    store.put(bucket=settings.minio_model_bucket, key=layout.key(version, layout.MODEL_FILE), data=blob)
    record.update(status="succeeded", finished_at=finished, metrics=result["metrics"],
                  history=result["history"], progress={**record["progress"], "fraction": 1.0})
    return records.put(record)


def run(version: str, settings: Settings, *, threads: int | None = None) -> int:
    """Run one job; on failure record the reason. Returns a process exit code."""
    if threads:
        torch.set_num_threads(threads)
    store = store_from_settings(settings)
    try:
        train_job(version=version, settings=settings, store=store)
        return 0
    except Exception as exc:  # every failure becomes the job's recorded reason
        reason = exc.detail if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s", version, reason)
        record_failure(version, reason, store=store, bucket=settings.minio_model_bucket)
        return 1


def record_failure(version: str, reason: str, *, store: Store, bucket: str, patience_s: float = 30.0) -> None:
    """Mark the job failed and remove partial objects, retrying while storage is briefly away."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            JobRecords(store=store, bucket=bucket).finish(version, "failed", reason)
            return
        except ServiceError as exc:
            log.warning("job %s: could not record the failure yet: %s", version, exc.detail)
            if time.monotonic() > deadline:
                return  # the executor records a generic failure once storage is back
            time.sleep(1.0)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _keep_freed_memory() -> None:
    # torch frees and re-allocates the same MB-sized buffers every step; with glibc's defaults a fresh
    # child hands them back to the kernel and faults them in again (2-5x the page faults, +10-25% CPU).
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD, glibc's largest
    except (OSError, AttributeError):
        pass


def run_in_child(version: str, env: dict[str, str], concurrency: int) -> None:
    """Entry point of a local executor child process."""
    _die_with_parent()
    _keep_freed_memory()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threads = max(1, (os.cpu_count() or 1) // concurrency)
    sys.exit(run(version, Settings(_env_file=None, **env), threads=threads))


def main() -> None:
    """`python -m app.jobs.worker VERSION`: the entry point of a Ray job (settings from the environment)."""
    parser = argparse.ArgumentParser(prog="python -m app.jobs.worker")
    parser.add_argument("version")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    sys.exit(run(layout.validate_version(args.version), load_settings()))


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a worker needs to reach the same storage (secrets included, never logged)."""
    values = {
        "MINIO_ENDPOINT": settings.minio_endpoint, "MINIO_ACCESS_KEY": settings.minio_access_key,
        "MINIO_SECRET_KEY": settings.minio_secret_key.get_secret_value() if settings.minio_secret_key else None,
        "MINIO_SECURE": json.dumps(settings.minio_secure),
        "MINIO_CA_CERT": str(settings.minio_ca_cert) if settings.minio_ca_cert else None,
        "MINIO_MODEL_BUCKET": settings.minio_model_bucket, "MINIO_DATASET_BUCKET": settings.minio_dataset_bucket,
        "SCV_DATA_DIR": str(Path(settings.data_dir).resolve()), "SCV_DEVICE": settings.device,
        "SCV_STORAGE_TIMEOUT": str(settings.storage_timeout_s),
    }
    return {k: v for k, v in values.items() if v is not None}


if __name__ == "__main__":
    main()
