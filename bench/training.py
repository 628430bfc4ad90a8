"""Training speed on MNIST-sized data: our loop against a hand-written one and the prototype; e2e overhead."""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime
from functools import partial
from multiprocessing import get_context

import torch
import torchvision
from fastapi.testclient import TestClient
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import models
from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from app.jobs.queue import TERMINAL
from app.main import create_app
from app.memory import keep_freed_memory
from app.storage.s3 import store_from_settings
from tests.support.rawdata import write_raw

PER_CLASS = {"train": 6000, "test": 1000}  # MNIST's sizes: 60k + 10k
SUBSET = 4000  # training images per run of the loop comparisons (interleaved, REPEATS each)
REPEATS = 3
EVAL_IMAGES = 64  # models.train always evaluates; one batch is <1% of a SUBSET epoch
# One job per core, so one torch thread each: on a shared 2-core machine two OpenMP threads that
# spin-wait lose 2-5x whenever anything else runs, which would drown every ratio below in noise.
JOBS_AT_ONCE = os.cpu_count() or 1
POLL_S = 0.25
JOB_TIMEOUT_S = 900


def measure(ctx) -> dict[str, float]:
    """train_vs_handwritten (>= 2.0), train_fp32_vs_handwritten (>= 0.95), train_vs_tuned_loop (>= 0.95),
    train_vs_prototype, augment_overhead (<= 0.10), train_e2e_overhead (<= 0.10, running service)."""
    raw = ctx.scratch / "raw"
    write_raw(raw, per_class_train=PER_CLASS["train"], per_class_test=PER_CLASS["test"], names=["mnist"])
    seed(ctx.store, ctx.settings, names=["mnist"], from_dir=raw, progress=False)
    # The service gets its own, empty data dir: its worker downloads the dataset (a cold disk cache).
    settings = ctx.settings.model_copy(update={"max_concurrent_jobs": JOBS_AT_ONCE,
                                               "data_dir": ctx.scratch / "service"})
    threads = max(1, (os.cpu_count() or 1) // settings.max_concurrent_jobs)  # as app.worker.run_in_child
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = _load(ctx.store, settings)
        loops = _compare_loops(data, raw)
        e2e = _end_to_end(settings, data, threads)
    finally:
        torch.set_num_threads(previous)
    return {**loops, **e2e, "train_torch_threads": float(threads),
            "train_bf16": float(data["config"].precision == "bf16")}


def _load(store, settings) -> dict:
    """The seeded split tensors exactly as a worker gets them, the default CNN, and the job's config."""
    device = models.pick_device(settings.device)
    service = DatasetService(store=store, settings=settings)
    manifest = service.manifest("mnist")
    train_x, train_y = service.load_split("mnist", "train")
    test_x, test_y = service.load_split("mnist", "test")
    layers = models.resolve_layers(None, input_shape=tuple(manifest["image_shape"]),
                                   num_classes=manifest["num_classes"])
    config = models.TrainConfig(epochs=1, batch_size=64, optimizer="adam", learning_rate=1e-3, seed=0,
                                device=device, precision=models.resolve_precision(settings.precision, device,
                                                                                  cpu_bf16=settings.cpu_bf16))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "layers": layers,
            "mean": manifest["mean"], "std": manifest["std"], "config": config}


# -- the three loops, each timed from its first batch to its last step -------------------------------------


def _service_loop(data: dict, n: int, *, test_n: int = EVAL_IMAGES, on_progress=None, precision=None,
                  augment: models.Augment | None = None) -> float:
    config = replace(data["config"], precision=precision or data["config"].precision, augment=augment)
    model = models.seeded_model(data["layers"], seed=config.seed)
    start = time.perf_counter()
    models.train(model, train_images=data["train_x"][:n], train_labels=data["train_y"][:n],
                 test_images=data["test_x"][:test_n], test_labels=data["test_y"][:test_n], mean=data["mean"],
                 std=data["std"], config=config, on_progress=on_progress or (lambda progress: None))
    return time.perf_counter() - start


def _handwritten_loop(data: dict, n: int) -> float:
    """The plainest float32 loop over uint8 tensors: randperm, index a batch, move it, normalise, step."""
    device = data["config"].device
    model = models.seeded_model(data["layers"], seed=data["config"].seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = data["train_x"][:n], data["train_y"][:n]
    mean = torch.tensor(data["mean"], device=device).view(-1, 1, 1)
    std = torch.tensor(data["std"], device=device).view(-1, 1, 1)
    start = time.perf_counter()
    model.train()
    order = torch.randperm(n)
    for first in range(0, n, 64):
        index = order[first:first + 64]
        x, y = images[index].to(device), labels[index].to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model((x.float() / 255 - mean) / std), y)
        loss.backward()
        optimizer.step()
    return finished(device) - start


def tuned_loop(data: dict, n: int) -> float:
    """The best loop a user could write with the service's tricks: its precision (bf16 autocast where native),
    channels_last, fused Adam, the split normalised once up front (outside the timing); no progress, no evaluation."""
    config = data["config"]
    model = models.seeded_model(data["layers"], seed=config.seed)
    layout = models.memory_format(model)
    model.to(config.device, memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=True)
    images = models.normalize(data["train_x"][:n].to(config.device), data["mean"], data["std"])
    images, labels = images.contiguous(memory_format=layout), data["train_y"][:n].to(config.device)
    finished(config.device)
    start = time.perf_counter()
    order = torch.randperm(n, device=config.device)
    for first in range(0, n, config.batch_size):
        index = order[first:first + config.batch_size]
        optimizer.zero_grad(set_to_none=True)
        with models.autocast(config.device, config.precision):
            loss = F.cross_entropy(model(images[index]), labels[index])
        loss.backward()
        optimizer.step()
    return finished(config.device) - start


def prototype_dataset(raw) -> torchvision.datasets.MNIST:
    """The prototype's dataset: torchvision's MNIST with per-sample ToTensor + Normalize, pickled and unpickled."""
    dataset = torchvision.datasets.MNIST(str(raw), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    # The prototype stored pickle.dumps(dataset) and trained on pickle.loads of it; pickle only ever here.
    return pickle.loads(pickle.dumps(dataset))  # noqa: S301 - our own bytes


def prototype_loop(data: dict, dataset, n: int) -> float:
    """The prototype: DataLoader(batch_size=64, shuffle=True, num_workers=0) over the unpickled Dataset."""
    device = data["config"].device
    model = models.seeded_model(data["layers"], seed=data["config"].seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=64, shuffle=True, num_workers=0)
    start = time.perf_counter()
    model.train()
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        loss.backward()
        optimizer.step()
    return finished(device) - start


def finished(device: str) -> float:
    """The time once queued GPU work is done (models.train ends by reading results back, which waits too)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _compare_loops(data: dict, raw) -> dict[str, float]:
    """Interleave the service (at its default precision and at fp32), the plain and the tuned loop and the
    prototype on SUBSET images, REPEATS times each; compare median img/s."""
    prototype = prototype_dataset(raw)
    runs = {"service": lambda: _service_loop(data, SUBSET),
            "service_fp32": lambda: _service_loop(data, SUBSET, precision="fp32"),
            "service_augment": lambda: _service_loop(data, SUBSET, augment=models.Augment(shift=2, flip=True)),
            "handwritten": lambda: _handwritten_loop(data, SUBSET), "tuned": lambda: tuned_loop(data, SUBSET),
            "prototype": lambda: prototype_loop(data, prototype, SUBSET)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            times[name].append(run())
    for name, seconds in times.items():
        _say(f"{name:<12} {SUBSET} images: " + ", ".join(f"{s:.2f}s" for s in seconds)
             + f" → median {SUBSET / statistics.median(seconds):.0f} img/s")
    rate = {name: SUBSET / statistics.median(seconds) for name, seconds in times.items()}
    return {"train_vs_handwritten": rate["service"] / rate["handwritten"],
            "train_fp32_vs_handwritten": rate["service_fp32"] / rate["handwritten"],
            "train_vs_tuned_loop": rate["service"] / rate["tuned"],
            "train_vs_prototype": rate["service"] / rate["prototype"],
            "augment_overhead": rate["service"] / rate["service_augment"] - 1,  # shift 2 + flip, per epoch
            **{f"train_{name}_img_s": value for name, value in rate.items()}}


# -- end to end: POST /train on a running service against the bare loop on the same epoch ---------------------


def _end_to_end(settings, data: dict, threads: int) -> dict[str, float]:
    """A full epoch through POST /train on a running service against the bare loop in a fresh process set up as
    the service's job processes are (allocator, thread count); the two alternate, twice each."""
    n = len(data["train_y"])
    bare_loop = partial(_bare_epoch_in_worker_setup, settings, threads)
    bare, warm = [], []
    with TestClient(create_app(settings)) as client, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        # A tiny job POSTed as soon as the app is up pays the cold start (forkserver still importing
        # torch, empty disk cache); the full epochs then run on the warm, long-running service.
        _, cold_phases = _job(client, dataset="mnist", seed=data["config"].seed, train_subset=64)
        _say(f"e2e cold   64 + eval {len(data['test_y'])}: " + _show(cold_phases))
        pool.submit(bare_loop, 64).result()  # the bare side's process warm too
        for _ in range(2):
            seconds, phases = pool.submit(bare_loop, n).result()
            bare.append(seconds)
            _say(f"bare loop  {n} + eval {len(data['test_y'])}: {seconds:.2f}s  " + _show(phases))
            seconds, phases = _job(client, dataset="mnist", seed=data["config"].seed)
            warm.append(seconds)
            _say(f"e2e warm   {n} + eval {len(data['test_y'])}: {seconds:.2f}s  " + _show(phases))
    bare_s, warm_s = statistics.median(bare), statistics.median(warm)
    return {"train_e2e_overhead": (warm_s - bare_s) / bare_s,
            "train_e2e_startup_cold": (cold_phases["start"] + cold_phases["load"]) / bare_s,
            "train_e2e_startup_warm": statistics.median(w - b for w, b in zip(warm, bare, strict=True)) / bare_s}


def _bare_epoch_in_worker_setup(settings, threads: int, n: int) -> tuple[float, dict[str, float]]:
    """In a process of its own: the job processes' allocator setting and thread count, the data as a worker loads
    it (from the warm local cache), then models.train timed alone: the least a job of n images can take."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    data = _load(store_from_settings(settings), settings)
    marks: dict[str, float] = {}

    def mark(progress: dict) -> None:
        now = time.perf_counter()
        marks.setdefault("first_step", now)
        marks["epoch_done" if "epoch_done" in progress else "last_step"] = now

    start = time.perf_counter()
    seconds = _service_loop(data, n, test_n=len(data["test_y"]), on_progress=mark)
    return seconds, {"first step": marks["first_step"] - start, "train": marks["last_step"] - marks["first_step"],
                     "evaluate": marks["epoch_done"] - marks["last_step"]}


def _job(client: TestClient, **body) -> tuple[float, dict[str, float]]:
    """Seconds from POST /train to `succeeded`, and its phases as seen by polling the job record."""
    posted, wall = time.perf_counter(), time.time()
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    version, seen = response.json()["version"], {}
    deadline = posted + JOB_TIMEOUT_S
    while True:
        record = client.get(f"/train/{version}").json()
        now = time.perf_counter()
        if (record.get("progress") or {}).get("step"):
            seen.setdefault("first_step", now)
        if record.get("history"):
            seen.setdefault("evaluated", now)
        if record["status"] in TERMINAL:
            break
        assert now < deadline, f"job {version} still {record['status']} after {JOB_TIMEOUT_S}s"
        time.sleep(POLL_S)
    assert record["status"] == "succeeded", record
    total = now - posted
    # start: POST → the worker runs (queue, fork); load: → first step seen (datasets, model, optimizer)
    started = _epoch_s(record["started_at"]) - wall
    first = seen.get("first_step", now) - posted
    evaluated = seen.get("evaluated", now) - posted
    return total, {"start": started, "load": first - started, "train+eval": evaluated - first,
                   "finish": total - evaluated}


def _epoch_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _show(phases: dict[str, float]) -> str:
    return "(" + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items()) + ")"


def _say(line: str) -> None:
    print(f"# training: {line}", file=sys.stderr, flush=True)
