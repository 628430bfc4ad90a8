"""Load: 50 concurrent model downloads plus listing and readiness checks while a job trains."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.db.engine import Database
from bench.registry import put_wide_model
from tests.support.rawdata import seed_raw, write_raw
from tests.support.replicas import Replica

CONCURRENT = 50
ROUNDS = 5
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
    # A real `scv serve` of its own (as in production): the 50 clients' threads here do not share its GIL.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}, **ctx.settings.to_env()}
    server = Replica(ctx.scratch, env)
    try:
        return _under_load(server, expected, len(blob))
    finally:
        server.stop()


def _get(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:  # a benchmark of failing requests measures nothing: stop here
        raise RuntimeError(f"GET {path}: {response.status_code}, expected 200: {response.text[:300]}")
    return response


def _under_load(server: Replica, expected: str, size: int) -> dict[str, float]:
    client = server.client

    def download() -> str:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return hashlib.sha256(_get(c, f"/models/{VERSION}").content).hexdigest()

    listed = {item["version"]: item["sha256"] for item in _get(client, "/models").json()["items"]}
    if listed.get(VERSION) != expected:
        raise RuntimeError(f"the catalog lists {VERSION} with sha256 {listed.get(VERSION)}, not the stored {expected}")
    single = statistics.median(_timed(download) for _ in range(5))
    with Watcher(server.url) as idle:  # no job, no download: the same process and loop as under load
        time.sleep(1.0)
    idle = statistics.median(idle.listing)

    busy = client.post("/train", json={"dataset": "mnist", "layers": [{"type": "Flatten"}], "epochs": 100,
                                       "batch_size": 1})
    if busy.status_code != 202:
        raise RuntimeError(f"POST /train: {busy.status_code}, expected 202: {busy.text[:300]}")
    busy = busy.json()["version"]
    while _get(client, f"/train/{busy}").json()["status"] != "running":
        time.sleep(0.1)
    try:
        # One round's listing swings with the shared machine (a slow spell in its 3-second window): the figure is
        # the median round's.
        rounds = [_round(server, download) for _ in range(ROUNDS)]
    finally:
        client.delete(f"/train/{busy}")
    digests = [d for r in rounds for d in r["digests"]]
    ready = [ok for r in rounds for ok in r["ready"]]
    wall = statistics.median(r["wall"] for r in rounds)
    return {
        "load_aggregate_vs_single": (CONCURRENT * size / wall) / (size / single),
        "load_intact_fraction": sum(d == expected for d in digests) / len(digests),  # 200s with the catalog's sha256
        "load_readyz_ok_fraction": sum(ready) / max(1, len(ready)),
        "load_listing_slowdown": statistics.median(r["listing"] for r in rounds) / idle,
        "load_aggregate_mb_per_s": CONCURRENT * size / wall / 2**20,
    }


def _round(server: Replica, download) -> dict:
    """50 concurrent downloads, with listing and readiness checked beside them by another process."""
    with Watcher(server.url) as watcher:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            digests = list(pool.map(lambda _: download(), range(CONCURRENT)))
        wall = time.perf_counter() - start
    return {"listing": statistics.median(watcher.listing), "ready": watcher.ready, "digests": digests, "wall": wall}


class Watcher:
    """`GET /models` and `GET /readyz` in turn, from a process of its own for the duration of the block: a thread of
    the bench would wait for the GIL behind the 50 download threads and time that, not the server."""

    def __init__(self, url: str):
        context = multiprocessing.get_context("spawn")
        self.stop, (self._receive, send) = context.Event(), context.Pipe(duplex=False)
        self._process = context.Process(target=_watch, args=(url, self.stop, send), daemon=True)

    def __enter__(self) -> Watcher:
        self._process.start()
        if self._receive.recv() != "started":
            raise RuntimeError("the watcher did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        result = self._receive.recv()
        self._process.join(30)
        if isinstance(result, str):
            raise RuntimeError(f"the watcher failed: {result}")
        self.listing, self.ready = result


def _watch(url: str, stop, send) -> None:
    listing, ready = [], []
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            _get(client, "/models")  # connected before the downloads begin
            send.send("started")
            while not stop.is_set() or not listing:
                listing.append(_timed(lambda: _get(client, "/models")))
                ready.append(client.get("/readyz").status_code == 200)
        send.send((listing, ready))
    except Exception as exc:  # noqa: BLE001 - reported to the bench, which raises it
        send.send(f"{type(exc).__name__}: {exc}")
