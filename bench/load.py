"""Load: 50 concurrent model downloads plus listing and readiness checks while a job trains."""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from app.db.engine import Database
from bench.registry import put_wide_model
from tests.support.liveserver import LiveServer
from tests.support.rawdata import seed_raw, write_raw

CONCURRENT = 50
VERSION = "bench-load-model"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(ctx) -> dict[str, float]:
    """load_aggregate_vs_single, load_intact_fraction, load_readyz_ok_fraction, load_listing_slowdown."""
    raw = ctx.scratch / "raw"
    write_raw(raw, per_class_train=6, per_class_test=3, names=["mnist"])
    seed_raw(ctx.store, ctx.settings, raw, names=["mnist"], cka_per_class=2)
    db = Database(ctx.settings.catalog_url)  # the catalog the server below opens
    db.migrate()
    blob = put_wide_model(ctx.store, ctx.settings.minio_model_bucket, version=VERSION, shape=[1, 28, 28],
                          wide=5000, db=db)  # ~16 MB
    db.dispose()
    expected = hashlib.sha256(blob).hexdigest()
    with LiveServer(ctx.settings) as server, server.client() as client:
        def download() -> str:
            with server.client() as c:
                return hashlib.sha256(c.get(f"/models/{VERSION}").content).hexdigest()

        single = statistics.median(_timed(download) for _ in range(5))
        idle_list = statistics.median(_timed(lambda: client.get("/models").raise_for_status()) for _ in range(10))

        busy = client.post("/train", json={"dataset": "mnist", "layers": [{"type": "Flatten"}], "epochs": 100,
                                           "batch_size": 1}).json()["version"]
        while client.get(f"/train/{busy}").json()["status"] != "running":
            time.sleep(0.1)
        stop, ready, listing = threading.Event(), [], []

        def watch() -> None:  # listing and readiness, side by side with the downloads
            with server.client() as c:
                while not stop.is_set():
                    listing.append(_timed(lambda: c.get("/models").raise_for_status()))
                    ready.append(c.get("/readyz").status_code == 200)

        watcher = threading.Thread(target=watch)
        watcher.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            digests = list(pool.map(lambda _: download(), range(CONCURRENT)))
        wall = time.perf_counter() - start
        stop.set()
        watcher.join()
        client.delete(f"/train/{busy}")
    return {
        "load_aggregate_vs_single": (CONCURRENT * len(blob) / wall) / (len(blob) / single),
        "load_intact_fraction": sum(d == expected for d in digests) / CONCURRENT,
        "load_readyz_ok_fraction": sum(ready) / max(1, len(ready)),
        "load_listing_slowdown": statistics.median(listing) / idle_list,
        "load_aggregate_mb_per_s": CONCURRENT * len(blob) / wall / 2**20,
    }
