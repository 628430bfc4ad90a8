"""What checkpointing costs: one long MNIST-sized run with a checkpoint every 2 s, every other one stored for real."""

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
PASSES = 6  # one epoch goes through them this many times: some 30 windows of 2 s on 2 cores
EVERY_S = 2.0


def measure(ctx) -> dict[str, float]:
    """checkpoint_overhead (<= 0.05): the time per training step in the 2 s after a checkpoint stored for real ÷ in
    the 2 s after one captured and dropped, minus 1 — the median over stored windows, each against the mean of the
    dropped windows on either side (drift between windows cancels); checkpoint_overhead_null: the same with nothing
    stored (the method's zero)."""
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

    def overhead(version: str, store: bool) -> float:
        queue.add(new_record(version=version, dataset="mnist", request={"epochs": 1}, layers=layers, labels={}))
        writer = CheckpointWriter(checkpoints, queue.claim(), "bench")
        marks: list[tuple[float, int]] = []  # (time, steps done) at each checkpoint; even ones are stored

        def on_checkpoint(checkpoint) -> None:
            if store and len(marks) % 2 == 0:
                writer(checkpoint)
            marks.append((time.perf_counter(), checkpoint.step))

        with writer:
            models.train(models.seeded_model(layers, seed=0), train_images=train_x.repeat(PASSES, 1, 1, 1),
                         train_labels=train_y.repeat(PASSES), test_images=test_x, test_labels=test_y,
                         mean=manifest["mean"], std=manifest["std"], config=config, on_checkpoint=on_checkpoint)
        checkpoints.discard(version)
        per_step = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(marks, marks[1:], strict=False)]
        return statistics.median(per_step[i] / ((per_step[i - 1] + per_step[i + 1]) / 2)
                                 for i in range(2, len(per_step) - 1, 2)) - 1

    try:
        return {"checkpoint_overhead": overhead("bench-checkpoints", store=True),
                "checkpoint_overhead_null": overhead("bench-checkpoints-null", store=False)}
    finally:
        torch.set_num_threads(previous_threads)
        db.dispose()
