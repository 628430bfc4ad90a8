"""GPU figures: an MNIST-sized epoch by the service's loop, the seed's path and a bare loop; jobs sharing one GPU.

Run by `bench/gpu.sh` on a machine with a CUDA GPU. `BENCH_GPU_SMOKE=1` runs every path on the CPU at a
hundredth of the size, to check the script before spending GPU time; its figures mean nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace

import torch
from fastapi.testclient import TestClient

import models
from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from app.main import create_app
from bench.training import prototype_dataset, prototype_loop, tuned_loop
from tests.support.rawdata import write_raw

SMOKE = os.environ.get("BENCH_GPU_SMOKE") == "1"
SCALE = 100 if SMOKE else 1
PER_CLASS = {"train": 6000 // SCALE, "test": 1000 // SCALE}  # MNIST's sizes: 60k + 10k
PROTOTYPE_IMAGES = 15000 // SCALE  # the seed's per-sample path is slow: timed on part of an epoch, as images/s
REPEATS = 3
EVAL_IMAGES = 64  # the loop comparisons evaluate one batch; the epoch figures evaluate the whole test split
JOBS = 8
JOB_EPOCHS = 3
POLL_S = 0.05


def measure(ctx) -> dict[str, float]:
    """gpu_train_vs_prototype (>= 10), gpu_train_vs_bare (>= 0.9), gpu_concurrent_jobs_speedup (>= 4), epoch times."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not SMOKE:
        sys.exit("bench gpu: torch sees no CUDA GPU here (BENCH_GPU_SMOKE=1 checks the script on the CPU)")
    raw = ctx.scratch / "raw"
    write_raw(raw, per_class_train=PER_CLASS["train"], per_class_test=PER_CLASS["test"], names=["mnist"])
    seed(ctx.store, ctx.settings, names=["mnist"], from_dir=raw, progress=False)
    data = _load(ctx, device)
    _say(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), torch {torch.__version__}, "
         f"precision {data['config'].precision}, {len(data['train_y'])} + {len(data['test_y'])} images")
    figures = _compare_loops(data, raw)
    figures |= _epochs(data)
    figures |= _concurrent_jobs(ctx, device)
    figures["gpu_bf16"] = float(data["config"].precision == "bf16")
    return figures


def _load(ctx, device: str) -> dict:
    """The seeded split tensors as a worker gets them, the default CNN, and the job's config at batch 64."""
    service = DatasetService(store=ctx.store, settings=ctx.settings)
    manifest = service.manifest("mnist")
    train_x, train_y = service.load_split("mnist", "train")
    test_x, test_y = service.load_split("mnist", "test")
    layers = models.resolve_layers(None, input_shape=tuple(manifest["image_shape"]),
                                   num_classes=manifest["num_classes"])
    config = models.TrainConfig(epochs=1, batch_size=64, seed=0, device=device,
                                precision=models.resolve_precision("auto", device))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "layers": layers,
            "mean": manifest["mean"], "std": manifest["std"], "config": config}


# -- the loops, each timed from its first batch until the device has finished ---------------------------------


def _service_loop(data: dict, *, batch_size: int = 64, test_n: int = EVAL_IMAGES, graphs: bool = False) -> float:
    """models.train as a worker runs it (progress read back every 0.5 s), on the whole training split."""
    config = replace(data["config"], batch_size=batch_size, cuda_graphs=graphs)
    model = models.seeded_model(data["layers"], seed=config.seed)
    start = time.perf_counter()
    models.train(model, train_images=data["train_x"], train_labels=data["train_y"],
                 test_images=data["test_x"][:test_n], test_labels=data["test_y"][:test_n], mean=data["mean"],
                 std=data["std"], config=config, on_progress=lambda progress: None)
    return time.perf_counter() - start  # train() ends by reading its sums back, which waits for the device


def _compare_loops(data: dict, raw) -> dict[str, float]:
    """Images per second of the three loops, interleaved REPEATS times after one warm-up each; median."""
    prototype = prototype_dataset(raw)
    n = len(data["train_y"])
    runs = {"service": (lambda: _service_loop(data), n), "bare": (lambda: tuned_loop(data, n), n),
            "graphed": (lambda: _service_loop(data, graphs=True), n),
            "prototype": (lambda: prototype_loop(data, prototype, PROTOTYPE_IMAGES), PROTOTYPE_IMAGES)}
    for run, _ in runs.values():
        run()  # warm-up: CUDA context, cuDNN plans, the allocator's pools
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, (run, images) in runs.items():
            rates[name].append(images / run())
    for name, values in rates.items():
        _say(f"{name:<10} img/s: " + ", ".join(f"{v:,.0f}" for v in values))
    rate = {name: statistics.median(values) for name, values in rates.items()}
    return {"gpu_train_vs_prototype": rate["service"] / rate["prototype"],
            "gpu_train_vs_bare": rate["service"] / rate["bare"], "gpu_service_img_s": rate["service"],
            "gpu_graphs_speedup": rate["graphed"] / rate["service"],
            "gpu_graphed_vs_bare": rate["graphed"] / rate["bare"],
            "gpu_bare_img_s": rate["bare"], "gpu_prototype_img_s": rate["prototype"]}


def _epochs(data: dict) -> dict[str, float]:
    """One whole epoch (training split, then the whole test split evaluated) at batch 64 and 512; median of 2."""
    figures = {}
    for batch in (64, 512):
        seconds = statistics.median(_service_loop(data, batch_size=batch, test_n=len(data["test_y"]))
                                    for _ in range(2))
        figures[f"gpu_epoch_s_b{batch}"] = seconds
        figures[f"gpu_images_per_s_b{batch}"] = len(data["train_y"]) / seconds
        _say(f"epoch at batch {batch}: {seconds:.2f}s")
    return figures


# -- many jobs on one GPU, through the service's own pool ------------------------------------------------------


def _concurrent_jobs(ctx, device: str) -> dict[str, float]:
    """Aggregate training images/s of JOBS jobs at once (SCV_MAX_CONCURRENT_JOBS=JOBS) ÷ one job alone."""
    settings = ctx.settings.model_copy(update={"max_concurrent_jobs": JOBS, "device": device,
                                               "data_dir": ctx.scratch / "service"})
    with TestClient(create_app(settings)) as client:
        _jobs(client, 1, epochs=1, subset=64)  # the pool's first start and the dataset's first download
        alone = _jobs(client, 1, epochs=JOB_EPOCHS)
        together = _jobs(client, JOBS, epochs=JOB_EPOCHS)
    _say(f"jobs: 1 alone {alone:,.0f} img/s; {JOBS} at once {together:,.0f} img/s together")
    return {"gpu_concurrent_jobs_speedup": together / alone, "gpu_one_job_img_s": alone,
            f"gpu_{JOBS}_jobs_img_s": together}


def _jobs(client: TestClient, count: int, *, epochs: int, subset: int | None = None) -> float:
    """Training images per second of `count` jobs run at once: all their images ÷ the time from the first
    step any of them is seen taking to the last epoch any of them is seen finishing (polled)."""
    body = {"dataset": "mnist", "epochs": epochs} | ({"train_subset": subset} if subset else {})
    size = subset or client.get("/datasets/mnist").json()["train_size"]
    versions = []
    for i in range(count):
        response = client.post("/train", json={**body, "seed": i})
        assert response.status_code == 202, response.text
        versions.append(response.json()["version"])
    first_step: dict[str, float] = {}
    done: dict[str, float] = {}
    images = 0
    deadline = time.monotonic() + 600
    while len(done) < count:
        assert time.monotonic() < deadline, "jobs still running after 600 s"
        for version in versions:
            if version in done:
                continue
            record = client.get(f"/train/{version}").json()
            now = time.perf_counter()
            if (record.get("progress") or {}).get("step"):
                first_step.setdefault(version, now)
            if len(record.get("history") or []) == epochs or record["status"] in ("succeeded", "failed", "cancelled"):
                assert record["status"] in ("running", "succeeded"), record
                done[version] = now
                images += size * epochs
        time.sleep(POLL_S)
    span = max(done.values()) - min(first_step.get(v, done[v]) for v in versions)
    return images / max(span, POLL_S)  # a job over between two polls took at most one poll


def _say(line: str) -> None:
    print(f"# gpu: {line}", file=sys.stderr, flush=True)
