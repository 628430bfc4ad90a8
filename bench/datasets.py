"""Dataset loading on MNIST-sized data: cold and cached loads against the prototype's pickled Dataset.

The prototype stored `pickle.dumps(torchvision.datasets.MNIST(..., transform=...))` in MinIO and
loaded it with `pickle.loads`; pickle appears here only to measure that, never in the service.
"""

import pickle
import shutil
import statistics
import time

import torchvision
from torchvision import transforms

from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from bench.rawdata import write_raw

REPEATS = 5


def _median_s(run, *, before=lambda: None) -> float:
    times = []
    for _ in range(REPEATS):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(ctx) -> dict[str, float]:
    """dataset_load_vs_prototype (prototype time ÷ our cold load), dataset_load_cached_mb_s, and context."""
    raw, bucket = ctx.scratch / "raw", ctx.settings.minio_dataset_bucket
    write_raw(raw, per_class_train=6000, per_class_test=1000, names=["mnist"])  # 60k + 10k, 28×28
    seed(ctx.store, ctx.settings, names=["mnist"], from_dir=raw, progress=False)

    prototype = torchvision.datasets.MNIST(str(raw), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    ctx.store.put(bucket=bucket, key="prototype/mnist-train.pkl", data=pickle.dumps(prototype))
    proto_s = _median_s(lambda: pickle.loads(ctx.store.get_bytes(bucket=bucket, key="prototype/mnist-train.pkl")))  # noqa: S301

    cache = ctx.settings.data_dir / "cache"
    size = DatasetService(store=ctx.store, settings=ctx.settings).manifest("mnist")["sizes"]["train.safetensors"]

    def load():
        DatasetService(store=ctx.store, settings=ctx.settings).load_split("mnist", "train")

    cold_s = _median_s(load, before=lambda: shutil.rmtree(cache, ignore_errors=True))
    # The floor for any cold load: one GET of the same bytes, nothing verified or parsed.
    get_s = _median_s(lambda: ctx.store.get_bytes(bucket=bucket, key="mnist/train.safetensors"))
    load()  # warm the disk cache; every timed run below uses a fresh service, so no in-process LRU
    cached_s = _median_s(load)

    def load_and_read():
        images, labels = DatasetService(store=ctx.store, settings=ctx.settings).load_split("mnist", "train")
        images.clone(), labels.clone()  # read every page of the memory-mapped cache file

    touched_s = _median_s(load_and_read)
    return {"dataset_load_vs_prototype": proto_s / cold_s,
            "dataset_load_cold_vs_bare_get": get_s / cold_s,
            "dataset_load_prototype_mb_s": size / proto_s / 1e6, "dataset_load_cold_mb_s": size / cold_s / 1e6,
            "dataset_load_cached_mb_s": size / cached_s / 1e6,
            "dataset_load_cached_read_mb_s": size / touched_s / 1e6}
