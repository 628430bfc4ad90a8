"""Dataset loading on MNIST-sized data: a cold load against a bare GET of the same bytes, and cached loads."""

import shutil
import statistics
import time

from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from tests.support.rawdata import write_raw

REPEATS = 5


def _median_s(run) -> float:
    return statistics.median(_timed(run) for _ in range(REPEATS))


def measure(ctx) -> dict[str, float]:
    """dataset_load_cold_vs_bare_get (cold load ÷ one GET of the same bytes; goal ≤ 1.15), dataset_load_cached_mb_s
    (goal ≥ 1000), and context."""
    raw, bucket = ctx.scratch / "raw", ctx.settings.minio_dataset_bucket
    write_raw(raw, per_class_train=6000, per_class_test=1000, names=["mnist"])  # 60k + 10k, 28×28
    seed(ctx.store, ctx.settings, names=["mnist"], from_dir=raw, progress=False)
    cache = ctx.settings.data_dir / "cache"
    size = DatasetService(store=ctx.store, settings=ctx.settings).manifest("mnist")["sizes"]["train.safetensors"]

    def load():
        DatasetService(store=ctx.store, settings=ctx.settings).load_split("mnist", "train")

    # The floor for any cold load: one GET of the same bytes, nothing verified, kept or parsed. The two alternate,
    # so both see the same state of a machine shared with the S3 server.
    cold, bare = [], []
    for _ in range(REPEATS):
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(_timed(load))
        bare.append(_timed(lambda: ctx.store.get_bytes(bucket=bucket, key="mnist/train.safetensors")))
    cold_s, get_s = statistics.median(cold), statistics.median(bare)
    load()  # warm the disk cache; every timed run below uses a fresh service, so no in-process LRU

    def load_and_read():
        images, labels = DatasetService(store=ctx.store, settings=ctx.settings).load_split("mnist", "train")
        images.clone(), labels.clone()  # read every byte of the memory-mapped cache file, as training does

    cached_s = _median_s(load_and_read)
    return {"dataset_load_cold_vs_bare_get": cold_s / get_s,
            "dataset_load_bare_get_mb_s": size / get_s / 1e6, "dataset_load_cold_mb_s": size / cold_s / 1e6,
            "dataset_load_cached_mb_s": size / cached_s / 1e6}


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start
