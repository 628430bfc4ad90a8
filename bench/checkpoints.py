"""What checkpointing costs: one MNIST-sized epoch with a checkpoint every 2 s, stored for real, against none."""

from __future__ import annotations

import os
import statistics
import time

import torch

import models
from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from app.db.engine import Database
from app.jobs.checkpoints import Checkpoints, CheckpointWriter
from app.jobs.queue import JobQueue
from app.jobs.record import new_record
from tests.support.rawdata import write_raw

PER_CLASS = {"train": 6000, "test": 100}  # MNIST's 60k training images; evaluation is not what is measured
EVERY_S = 2.0
REPEATS = 5


def measure(ctx) -> dict[str, float]:
    """checkpoint_overhead (<= 0.05): epoch time with checkpoints every 2 s ÷ without, minus 1 (the median of five
    adjacent pairs)."""
    raw = ctx.scratch / "raw"
    write_raw(raw, per_class_train=PER_CLASS["train"], per_class_test=PER_CLASS["test"], names=["mnist"])
    seed(ctx.store, ctx.settings, names=["mnist"], from_dir=raw, progress=False)
    datasets = DatasetService(store=ctx.store, settings=ctx.settings)
    manifest = datasets.manifest("mnist")
    (train_x, train_y), (test_x, test_y) = (datasets.load_split("mnist", split) for split in ("train", "test"))
    layers = models.resolve_layers(None, input_shape=tuple(manifest["image_shape"]),
                                   num_classes=manifest["num_classes"])
    device = models.pick_device(ctx.settings.device)
    config = models.TrainConfig(epochs=1, batch_size=64, device=device, checkpoint_every_s=EVERY_S,
                                precision=models.resolve_precision(ctx.settings.precision, device,
                                                                   cpu_bf16=ctx.settings.cpu_bf16))
    db = Database(ctx.settings.catalog_url)
    db.migrate()
    queue = JobQueue(db, lease_seconds=600, max_attempts=1)
    checkpoints = Checkpoints(store=ctx.store, bucket=ctx.settings.minio_model_bucket, queue=queue)
    previous_threads = torch.get_num_threads()
    # a worker's own thread count (app.jobs.worker.run_in_child, one job at a time): the storing thread competes
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.settings.max_concurrent_jobs)))
    stored: list[int] = []

    def epoch(with_checkpoints: bool, run: int) -> float:
        model = models.seeded_model(layers, seed=0)
        args = dict(train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
                    mean=manifest["mean"], std=manifest["std"], config=config)
        if not with_checkpoints:
            start = time.perf_counter()
            models.train(model, **args)
            return time.perf_counter() - start
        version = f"bench-checkpoints-{run}"
        queue.add(new_record(version=version, dataset="mnist", request={"epochs": 1}, layers=layers, labels={}))
        claim = queue.claim()
        writer = CheckpointWriter(checkpoints, claim, "bench")
        counted = []
        with writer:
            start = time.perf_counter()
            models.train(model, **args, on_checkpoint=lambda c: (counted.append(c), writer(c)))
            elapsed = time.perf_counter() - start
        stored.append(len(counted))
        checkpoints.discard(version)
        return elapsed

    try:
        epoch(False, -1)  # warm-up: first-use costs of the kernels and the allocator
        ratios = []
        for run in range(REPEATS):  # pairs of adjacent epochs, the order alternating: drift hits both sides of a pair
            if run % 2 == 0:
                plain, checked = epoch(False, run), epoch(True, run)
            else:
                checked, plain = epoch(True, run), epoch(False, run)
            ratios.append(checked / plain)
    finally:
        torch.set_num_threads(previous_threads)
        db.dispose()
    return {"checkpoint_overhead": statistics.median(ratios) - 1,
            "checkpoints_per_epoch": float(statistics.median(stored))}
