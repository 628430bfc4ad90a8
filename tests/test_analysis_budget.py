"""SCV_ANALYSIS_MAX_BYTES holds for the whole service: a real `scv serve` at 64 MiB keeps its process tree's memory
(proportional set size, so that pages a worker child shares with its parent count once) within the budget + 300 MB
while it computes a test-split CKA of a two-layer 128-channel network (an analysis job, in a worker child), that
network's top images (in the API process), and a CKA-set analysis of a network at the layer limits."""

import os
import threading
import time
from pathlib import Path

import pytest

from app.db.engine import Database
from app.storage.s3 import store_from_settings
from tests.support.rawdata import seed_raw, write_raw
from tests.support.registry import put_model
from tests.support.replicas import Replica
from tests.support.s3 import make_settings
from tests.support.waiting import wait_until

MiB = 1024 * 1024
BUDGET, ALLOWED = 64 * MiB, 64 * MiB + 300 * 10**6
TEST_IMAGES = 1000  # × 128 channels × 28 × 28 float32: about 400 MB per layer if a layer were held whole
WIDE = [{"type": "Conv2d", "out_channels": 128, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
        {"type": "Conv2d", "out_channels": 128, "kernel_size": 3, "padding": 1}, {"type": "ReLU"}]
# At the layer limits: 1024 channels of 62×62 (3.9 M values per image; the limit is 4 M) on CIFAR-sized images.
LIMIT = [{"type": "Conv2d", "out_channels": 1024, "kernel_size": 3, "padding": 16}, {"type": "ReLU"},
         {"type": "AdaptiveAvgPool2d", "output_size": 1}]

pytestmark = pytest.mark.slow  # a real service and about a minute of wide forward passes


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _pss(pid: int) -> int:
    """The process tree's proportional set size in bytes (a process that ended meanwhile counts 0)."""
    total = 0
    for member in _tree(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


class Peak:
    """The highest PSS of a process tree, sampled every 20 ms while the block runs, over its PSS before."""

    def __init__(self, pid: int):
        self.pid, self.stop, self.peak = pid, threading.Event(), 0

    def __enter__(self):
        self.before = _pss(self.pid)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _pss(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.growth = self.peak - self.before


@pytest.fixture(scope="module")
def service(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    settings = make_settings(s3, tmp, SCV_ANALYSIS_MAX_BYTES=str(BUDGET))
    store = store_from_settings(settings)
    store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
    write_raw(tmp / "raw", per_class_train=2, per_class_test=TEST_IMAGES // 10, names=["mnist", "cifar10"])
    seed_raw(store, settings, tmp / "raw", names=["mnist", "cifar10"], cka_per_class=10)
    db = Database(settings.catalog_url)
    db.migrate()
    put_model(store, settings.minio_model_bucket, "wide", db=db, dataset="mnist", layers=WIDE, input_shape=(1, 28, 28))
    put_model(store, settings.minio_model_bucket, "limit", db=db, dataset="cifar10", layers=LIMIT,
              input_shape=(3, 32, 32))
    put_model(store, settings.minio_model_bucket, "warm", db=db, dataset="mnist", layers=[{"type": "Flatten"}],
              input_shape=(1, 28, 28))
    db.dispose()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}, **settings.to_env()}
    server = Replica(tmp, env)
    server.client.timeout = 600
    # Warm up: the pool's forkserver imports torch in the background, and a first analysis job loads what every
    # later one uses; the budget is about what an analysis adds, not what starting the service does.
    warm = ("/models/warm/cka", {"data": "test"})
    wait_until(lambda: server.client.get(warm[0], params=warm[1]).status_code == 200, timeout=300, what="warm-up")
    yield server
    server.stop()


def test_a_test_split_cka_of_a_wide_network_stays_within_the_budget(service):
    url, params = "/models/wide/cka", {"data": "test", "batch_size": 256}
    with Peak(service.process.pid) as peak:
        assert service.client.get(url, params=params).status_code == 202  # an analysis job, in a worker child
        wait_until(lambda: service.client.get(url, params=params).status_code != 202, timeout=900,
                   what="the test-split CKA")
    body = service.client.get(url, params=params).json()
    assert body["n"] == TEST_IMAGES and body["batches"] == 4  # 3 × 256 + 232
    assert len(body["matrix"]) == len(body["layers"]) == 6  # and the Flatten and Linear resolve_layers adds
    assert peak.growth <= ALLOWED, f"the service grew by {peak.growth / MiB:.0f} MiB"


def test_top_images_of_a_wide_network_stay_within_the_budget(service):
    with Peak(service.process.pid) as peak:
        r = service.client.get("/models/wide/top-images", params={"layer": 3, "channel": 5, "k": 9})
    assert r.status_code == 200, r.text
    assert len(r.json()["indices"]) == 9 and r.json()["activations"] == sorted(r.json()["activations"], reverse=True)
    assert peak.growth <= ALLOWED, f"the service grew by {peak.growth / MiB:.0f} MiB"


def test_a_cka_set_analysis_at_the_layer_limits_stays_within_the_budget(service):
    with Peak(service.process.pid) as peak:
        r = service.client.get("/models/limit/cka", params={"estimator": "debiased"})
    assert r.status_code == 200, r.text
    assert len(r.json()["matrix"]) == 5  # Conv2d, ReLU, pool, and the Flatten and Linear resolve_layers adds
    assert peak.growth <= ALLOWED, f"the service grew by {peak.growth / MiB:.0f} MiB"
