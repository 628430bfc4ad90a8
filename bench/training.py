"""Training speed on MNIST-sized data: our loop against a hand-written one and the prototype; e2e overhead."""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import time
from datetime import datetime

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
    """train_vs_handwritten (>= 2.0), train_vs_prototype (>= 4), train_e2e_overhead (<= 0.10, running service)."""
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
        data = _load(ctx, settings)
        loops = _compare_loops(data, raw)
        e2e = _end_to_end(settings, data)
    finally:
        torch.set_num_threads(previous)
    return {**loops, **e2e, "train_torch_threads": float(threads),
            "train_bf16": float(data["config"].precision == "bf16")}


def _load(ctx, settings) -> dict:
    """The seeded split tensors exactly as a worker gets them, the default CNN, and the job's config."""
    device = models.pick_device(settings.device)
    service = DatasetService(store=ctx.store, settings=ctx.settings)
    manifest = service.manifest("mnist")
    train_x, train_y = service.load_split("mnist", "train")
    test_x, test_y = service.load_split("mnist", "test")
    layers = models.resolve_layers(None, input_shape=tuple(manifest["image_shape"]),
                                   num_classes=manifest["num_classes"])
    config = models.TrainConfig(epochs=1, batch_size=64, optimizer="adam", learning_rate=1e-3, seed=0,
                                device=device, precision=models.resolve_precision(settings.precision, device))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "layers": layers,
            "mean": manifest["mean"], "std": manifest["std"], "config": config}


# -- the three loops, each timed from its first batch to its last step -------------------------------------


def _service_loop(data: dict, n: int, *, test_n: int = EVAL_IMAGES, on_progress=None) -> float:
    model = models.seeded_model(data["layers"], seed=data["config"].seed)
    start = time.perf_counter()
    models.train(model, train_images=data["train_x"][:n], train_labels=data["train_y"][:n],
                 test_images=data["test_x"][:test_n], test_labels=data["test_y"][:test_n], mean=data["mean"],
                 std=data["std"], config=data["config"], on_progress=on_progress or (lambda progress: None))
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
    return _finished(device) - start


def _prototype_loop(data: dict, dataset, n: int) -> float:
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
    return _finished(device) - start


def _finished(device: str) -> float:
    """The time once queued GPU work is done (models.train ends by reading results back, which waits too)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _compare_loops(data: dict, raw) -> dict[str, float]:
    """Interleave service, hand-written and prototype runs on SUBSET images; compare median img/s."""
    prototype = torchvision.datasets.MNIST(str(raw), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    # The prototype stored pickle.dumps(dataset) and trained on pickle.loads of it; pickle only ever here.
    prototype = pickle.loads(pickle.dumps(prototype))  # noqa: S301 - our own bytes
    runs = {"service": lambda: _service_loop(data, SUBSET), "handwritten": lambda: _handwritten_loop(data, SUBSET),
            "prototype": lambda: _prototype_loop(data, prototype, SUBSET)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            times[name].append(run())
    for name, seconds in times.items():
        _say(f"{name:<11} {SUBSET} images: " + ", ".join(f"{s:.2f}s" for s in seconds)
             + f" → median {SUBSET / statistics.median(seconds):.0f} img/s")
    rate = {name: SUBSET / statistics.median(seconds) for name, seconds in times.items()}
    return {"train_vs_handwritten": rate["service"] / rate["handwritten"],
            "train_vs_prototype": rate["service"] / rate["prototype"],
            "train_service_img_s": rate["service"], "train_handwritten_img_s": rate["handwritten"],
            "train_prototype_img_s": rate["prototype"]}


# -- end to end: POST /train on a running service against the bare loop on the same epoch ---------------------


def _end_to_end(settings, data: dict) -> dict[str, float]:
    marks: dict[str, float] = {}

    def mark(progress: dict) -> None:
        now = time.perf_counter()
        marks.setdefault("first_step", now)
        marks["epoch_done" if "epoch_done" in progress else "last_step"] = now

    start = time.perf_counter()
    bare = _service_loop(data, len(data["train_y"]), test_n=len(data["test_y"]), on_progress=mark)
    bare_phases = {"first step": marks["first_step"] - start, "train": marks["last_step"] - marks["first_step"],
                   "evaluate": marks["epoch_done"] - marks["last_step"]}
    _say(f"bare loop  {len(data['train_y'])} + eval {len(data['test_y'])}: {bare:.2f}s  " + _show(bare_phases))
    with TestClient(create_app(settings)) as client:
        # A tiny job POSTed as soon as the app is up pays the cold start (forkserver still importing
        # torch, empty disk cache); the full epoch then runs on the warm, long-running service.
        _, cold_phases = _job(client, dataset="mnist", seed=data["config"].seed, train_subset=64)
        _say(f"e2e cold   64 + eval {len(data['test_y'])}: " + _show(cold_phases))
        warm, warm_phases = _job(client, dataset="mnist", seed=data["config"].seed)
        _say(f"e2e warm   {len(data['train_y'])} + eval {len(data['test_y'])}: {warm:.2f}s  " + _show(warm_phases))
    return {"train_e2e_overhead": (warm - bare) / bare,
            "train_e2e_startup_cold": (cold_phases["start"] + cold_phases["load"]) / bare,
            "train_e2e_startup_warm": (warm_phases["start"] + warm_phases["load"]) / bare}


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
