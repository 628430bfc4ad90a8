"""A resumable job, and what the resume tests do to it: find its worker, stop it at a checkpoint, compare runs."""

import os
import signal
import time

import torch
from safetensors.torch import load as load_tensors

from app.storage.s3 import store_from_settings
from tests.support.waiting import wait_for, wait_until

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "BatchNorm2d"}, {"type": "ReLU"},
             {"type": "Dropout2d", "p": 0.2}, {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
JOB = {"dataset": "mnist", "layers": SMALL_NET, "epochs": 30, "batch_size": 1, "seed": 11}  # a few seconds
# The same job with recipe fields whose state a checkpoint must carry: the augmentation generator, the schedule,
# the held-out split, the best weights so far (a patience this long never stops it: the kill must find it running).
RECIPE_JOB = {**JOB, "augment": {"shift": 2, "flip": True}, "schedule": "onecycle", "learning_rate": 3e-3,
              "validation_split": 0.25, "early_stopping": {"metric": "val_loss", "patience": 30, "restore_best": True}}


def weights(client, version: str) -> dict[str, torch.Tensor]:
    settings = client.app.state.settings
    return load_tensors(store_from_settings(settings).get_bytes(bucket=settings.minio_model_bucket,
                                                                key=f"{version}/model.safetensors"))


def snapshots(client, version: str) -> list[tuple[dict, bytes]]:
    """A finished job's snapshots as GET /models/{version}/snapshots lists and sends them, each file with the version
    it names in its header written `{version}` (so the files of two runs compare byte for byte), and its entry without
    the sha256 (of the bytes that name the version)."""
    items = client.get(f"/models/{version}/snapshots").json()["items"]
    return [({k: v for k, v in item.items() if k != "sha256"},
             client.get(f"/models/{version}/snapshots/{item['epoch']}").content.replace(version.encode(), b"{version}"))
            for item in items]


def finished_run(client, version: str) -> tuple[dict[str, torch.Tensor], dict, list[tuple[dict, bytes]]]:
    """What a run that succeeded leaves: its weights, its job record and its snapshots."""
    return weights(client, version), client.get(f"/train/{version}").json(), snapshots(client, version)


def checkpoints(client, version: str) -> list[dict]:
    return client.app.state.jobs.queue.checkpoints(version)


def objects(client, prefix: str) -> list[str]:
    settings = client.app.state.settings
    return [o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket, prefix=prefix)]


def running_pid(client, version: str, attempt: int) -> int:
    def pid():
        record = client.get(f"/train/{version}").json()
        assert record["status"] in ("queued", "running"), record
        worker = record["worker"]
        return worker["pid"] if record["attempts"] == attempt and worker and worker["pid"] != os.getpid() else None
    return wait_until(pid, what=f"attempt {attempt} running")


def stop_when_latest(client, version: str, pid: int, wanted) -> dict:
    """SIGSTOP the worker at a moment its latest stored checkpoint is `wanted`; returns that checkpoint."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = checkpoints(client, version)
        assert client.get(f"/train/{version}").json()["status"] == "running", "the job ended first"
        if stored and wanted(stored[0]):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.2)  # a store already under way lands now, or never
            stored = checkpoints(client, version)
            if wanted(stored[0]):
                return stored[0]
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the wanted checkpoint never was the latest")


def assert_same_run(client, version: str, reference) -> dict:
    record = wait_for(client, version, timeout=300)
    want_weights, want, want_snapshots = reference
    assert record["status"] == "succeeded", record
    got = weights(client, version)
    assert got.keys() == want_weights.keys()
    assert all(torch.equal(got[k], want_weights[k]) for k in got)
    assert record["metrics"] == want["metrics"] and record["history"] == want["history"]
    # every epoch's snapshot, byte for byte (those an earlier attempt stored, and those this one did), and its entry
    got_snapshots = snapshots(client, version)
    assert [entry["epoch"] for entry, _ in got_snapshots] == list(range(want["request"]["epochs"] + 1))
    assert got_snapshots == want_snapshots
    # the worker removes them right after recording success (housekeeping would, if it died first)
    wait_until(lambda: objects(client, f"{version}/checkpoints/") == [] and checkpoints(client, version) == [],
               timeout=30, what="checkpoints removed after success")
    return record
