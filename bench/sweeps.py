"""ASHA's saving: the epochs a random sweep spends with asynchronous successive halving ÷ without, on synthetic data,
and how far ASHA's best trial falls behind the best of the full sweep."""

from __future__ import annotations

import os
import time

from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.rawdata import seed_raw, write_raw

PER_CLASS = {"train": 60, "test": 20}  # 600 / 200 images; learning rates low enough that epochs separate them
NET = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "ReLU"},
       {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
SWEEP = {"base": {"dataset": "mnist", "layers": NET, "epochs": 9, "batch_size": 32, "validation_split": 0.2,
                  "snapshot_every": 0},
         "space": {"learning_rate": {"min": 1e-5, "max": 1e-3, "log": True}, "batch_size": [16, 32, 64]},
         "strategy": "random", "trials": 9, "random_seed": 2026}
ASHA = {"type": "asha", "min_epochs": 1, "reduction_factor": 3}
TIMEOUT_S = 1800
# Trials one after the other: the order they reach each rung, and so the figure, is then the same on every run
# (BENCH_SWEEP_JOBS=2 shows how it spreads when they race).
JOBS_AT_ONCE = int(os.environ.get("BENCH_SWEEP_JOBS", "1"))


def measure(ctx) -> dict[str, float]:
    """asha_epochs_fraction (<= 0.5): epochs run with ASHA (η=3, min 1 epoch) ÷ without, 9 random trials × 9 epochs;
    asha_best_gap_pp (<= 1): the full sweep's best val_accuracy minus ASHA's, in percentage points."""
    raw = ctx.scratch / "raw"
    write_raw(raw, per_class_train=PER_CLASS["train"], per_class_test=PER_CLASS["test"], names=["mnist"])
    seed_raw(ctx.store, ctx.settings, raw, names=["mnist"])
    settings = ctx.settings.model_copy(update={"max_concurrent_jobs": JOBS_AT_ONCE,
                                               "data_dir": ctx.scratch / "service"})
    with TestClient(create_app(settings)) as client:
        plain = _run(client, SWEEP)
        asha = _run(client, {**SWEEP, "early_stop": ASHA})
    assert [t["config"] for t in plain["trials"]] == [t["config"] for t in asha["trials"]]  # the same draw
    epochs = {name: sum(t["epochs_run"] for t in record["trials"]) for name, record in
              (("plain", plain), ("asha", asha))}
    return {"asha_epochs_fraction": epochs["asha"] / epochs["plain"],
            "asha_best_gap_pp": 100 * (plain["best"]["metric"] - asha["best"]["metric"]),
            "asha_stopped_trials": float(sum(t["stopped_early"] is not None for t in asha["trials"]))}


def _run(client, body: dict) -> dict:
    response = client.post("/sweeps", json=body)
    response.raise_for_status()
    sweep_id, deadline = response.json()["id"], time.monotonic() + TIMEOUT_S
    while (record := client.get(f"/sweeps/{sweep_id}").json())["status"] == "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"sweep {sweep_id} still running after {TIMEOUT_S} s")
        time.sleep(0.5)
    if {t["status"] for t in record["trials"]} != {"succeeded"}:
        raise RuntimeError(f"sweep {sweep_id}: trials did not all succeed: {[t['status'] for t in record['trials']]}")
    return record
