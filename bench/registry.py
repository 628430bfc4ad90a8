"""Registry benchmarks: 200 MB downloads (first, and from the cache) against direct S3, the API's memory, pages."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import torch
import urllib3
from torch import nn

import models
from app.db.engine import Database
from app.registry import catalog, publishing
from app.registry.rebuild import rebuild_catalog
from app.storage.embedded import free_ports

BIG = "bench-big-200mb"
SMALL_MODELS = 1000
TIMED_RUNS = 5
LIST_RUNS = 5
PAGE_ROWS = (1_000, 100_000)  # catalog sizes compared by list_models_page_growth
PAGE_RUNS = 31
CLIENT_READ_BYTES = 4 * 1024 * 1024  # what the client asks for per read, the same from S3 and from the API


def measure(ctx) -> dict[str, float]:
    """download_vs_direct_s3 (first download, from storage; the cache fills after it; ≥ 0.4),
    download_cached_vs_direct_s3 (repeat download, from the API's local cache; ≥ 1.0), download_rss_growth_mb
    (≤ 50), list_models_speedup (≥ 20), list_models_page_growth (≤ 2.0)."""
    bucket = ctx.settings.minio_model_bucket
    size, digest = _put_big_model(ctx.store, bucket)
    _put_small_models(ctx.store, bucket)
    (ctx.scratch / "api").mkdir(exist_ok=True)
    db = Database(f"sqlite:///{ctx.scratch / 'api' / 'catalog.db'}")  # the API process's catalog (_api_server)
    db.migrate()
    rebuild_catalog(store=ctx.store, db=db, bucket=bucket)  # as `scv catalog rebuild` lists them
    db.dispose()
    api_cache = ctx.scratch / "api" / "cache"  # the API process's local cache (SCV_DATA_DIR/cache)
    with _api_server(ctx) as (url, pid), httpx.Client(base_url=url, timeout=120) as client:
        http = urllib3.PoolManager(timeout=120)
        before = _peak_rss_mb(pid)
        assert _download(http, url, check=digest) == size  # the body is the model, byte for byte
        direct, first, cached = [], [], []
        for _ in range(TIMED_RUNS):  # each download next to its baseline: the machine's speed drifts
            _filled(api_cache / f"{digest}.safetensors")
            cached.append(size / _timed(lambda: _download(http, url)))
            shutil.rmtree(api_cache)  # cold: the next download streams from storage, then the cache fills
            direct.append(_direct_s3(ctx.store, bucket, size))
            first.append(size / _timed(lambda: _download(http, url)))
        _filled(api_cache / f"{digest}.safetensors")
        assert [path.name for path in api_cache.iterdir()] == [f"{digest}.safetensors"]
        assert _download(http, url, check=digest) == size  # from the cache, byte for byte
        growth = _peak_rss_mb(pid) - before

        def page() -> list:
            response = client.get("/models", params={"limit": 1000})
            response.raise_for_status()
            return response.json()["items"]

        cold = _timed(page)  # the first page after start-up
        warm = statistics.median(_timed(page) for _ in range(LIST_RUNS))
        assert len(page()) == 1000
        naive = min(_timed(lambda: _read_every_record(ctx.store, bucket)) for _ in range(2))
    return {
        "download_vs_direct_s3": max(first) / max(direct),
        "download_cached_vs_direct_s3": max(cached) / max(direct),
        "download_api_mb_per_s": max(first) / 2**20,
        "download_cached_mb_per_s": max(cached) / 2**20,
        "download_direct_s3_mb_per_s": max(direct) / 2**20,
        "download_rss_growth_mb": growth,
        "list_models_speedup": naive / warm,
        "list_models_cold_speedup": naive / cold,
        **list_models_page_growth(),
    }


def list_models_page_growth() -> dict[str, float]:
    """Median latency of a page of 50 via `page_models` at 100,000 model rows ÷ at 1,000 (SQLite); goal ≤ 2.0.

    Each run times the pages a client asks for: the first page and one continuing from a cursor half-way
    down, newest first and by accuracy.
    """
    catalogs, times = {}, {rows: [] for rows in PAGE_ROWS}
    with tempfile.TemporaryDirectory(prefix="scv-bench-pages-") as tmp:
        for rows in PAGE_ROWS:
            db = Database(f"sqlite:///{tmp}/{rows}.db")
            db.migrate()
            _insert_model_rows(db, rows)
            with db.read() as conn:
                middle = {sort: catalog.page_models(conn, sort=sort, limit=rows // 2)[0][-1] for sort in catalog.SORTS}
            pages = [(sort, after) for sort in catalog.SORTS for after in (None, catalog.sort_key(middle[sort], sort))]
            _page_latency(db, pages)  # warm the page cache
            catalogs[rows] = db, pages
        for _ in range(PAGE_RUNS):  # the sizes in turn: a slow spell of the machine falls on both
            for rows, (db, pages) in catalogs.items():
                times[rows].append(_page_latency(db, pages))
        for db, _ in catalogs.values():
            db.dispose()
    medians = {rows: statistics.median(runs) for rows, runs in times.items()}
    small, large = PAGE_ROWS
    return {"list_models_page_growth": medians[large] / medians[small],
            "list_models_page_ms_100k": medians[large] * 1000}


def _page_latency(db: Database, pages: list[tuple[str, tuple | None]]) -> float:
    """The median time of one page of 50 of each (sort, after) in `pages`."""
    with db.read() as conn:
        return statistics.median(_timed(lambda s=sort, a=after: catalog.page_models(conn, sort=s, limit=50, after=a))
                                 for sort, after in pages)


def _insert_model_rows(db: Database, count: int) -> None:
    """`count` model rows as finished jobs leave them (executemany, 10,000 a statement)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for first in range(0, count, 10_000):
        metas = [{"version": f"bench-{i:06d}", "dataset": "mnist" if i % 3 else "cifar10", "size_bytes": 1000,
                  "created_at": catalog.iso(start + timedelta(seconds=i)), "sha256": f"{i:064x}",
                  "metrics": {"test_accuracy": (i * 7919 % 10_007) / 10_007}, "epochs": 1, "num_parameters": 10}
                 for i in range(first, min(count, first + 10_000))]
        with db.write() as conn:
            publishing.list_models(conn, metas)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _put_big_model(store, bucket: str) -> tuple[int, str]:
    """A valid ~200 MB safetensors model file (one wide Linear) and its metadata.json."""
    blob = put_wide_model(store, bucket, version=BIG, shape=[1, 64, 64], wide=12_208)
    return len(blob), hashlib.sha256(blob).hexdigest()


def put_wide_model(store, bucket: str, *, version: str, shape: list[int], wide: int,
                   db: Database | None = None) -> bytes:
    """Store a valid model file (Flatten, Linear(wide), Linear(10)) and its metadata.json, and list it in `db` when
    given; returns the file."""
    features = shape[0] * shape[1] * shape[2]
    layers = [{"type": "Flatten", "start_dim": 1, "end_dim": -1},
              {"type": "Linear", "in_features": features, "out_features": wide, "bias": True},
              {"type": "Linear", "in_features": wide, "out_features": 10, "bias": True}]
    with torch.no_grad():
        net = nn.Sequential(nn.Flatten(), nn.Linear(features, wide), nn.Linear(wide, 10))
    blob = models.save_model(net, layers=layers, input_shape=shape, classes=[str(i) for i in range(10)],
                             normalization={"mean": [0.5], "std": [0.25]}, dataset="mnist", version=version)
    metadata = _metadata(blob, version=version, layers=layers, shape=shape)
    publishing.store_objects(store, bucket=bucket, metadata=metadata, blob=blob)
    if db is not None:
        with db.write() as conn:
            publishing.list_models(conn, [metadata])
    return blob


def _metadata(blob: bytes, *, version: str, layers: list, shape: list, created_at: str | None = None) -> dict:
    return publishing.describe(blob, version=version, dataset="mnist", created_at=created_at, request={"epochs": 1},
                               layers=layers, metrics={"test_accuracy": 0.5}, history=[],
                               classes=[str(i) for i in range(10)], normalization={"mean": [0.5], "std": [0.25]},
                               input_shape=shape, epochs=1, num_parameters=0)


def _put_small_models(store, bucket: str) -> None:
    """SMALL_MODELS tiny but valid model entries (metadata.json + model.safetensors), written concurrently."""
    shape = [1, 4, 4]
    layers = models.resolve_layers([{"type": "Flatten"}], input_shape=tuple(shape), num_classes=10)
    net, start = models.build_sequential(layers), datetime(2026, 1, 1, tzinfo=UTC)

    def put(i: int) -> None:
        version = f"bench-small-{i:04d}"
        blob = models.save_model(net, layers=layers, input_shape=shape, classes=[str(c) for c in range(10)],
                                 normalization={"mean": [0.5], "std": [0.25]}, dataset="mnist", version=version)
        meta = _metadata(blob, version=version, layers=layers, shape=shape,
                         created_at=catalog.iso(start + timedelta(seconds=i)))
        publishing.store_objects(store, bucket=bucket, metadata=meta, blob=blob)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, range(SMALL_MODELS)))


def _direct_s3(store, bucket: str, size: int) -> float:
    """Bytes per second of one plain GET of the big model through Store.iter_bytes."""
    start, got = time.perf_counter(), 0
    for chunk in store.iter_bytes(bucket=bucket, key=f"{BIG}/model.safetensors", chunk_size=CLIENT_READ_BYTES):
        got += len(chunk)
    assert got == size
    return size / (time.perf_counter() - start)


def _download(http: urllib3.PoolManager, url: str, check: str | None = None) -> int:
    """Bytes of one download of the big model through the API. The client reads as the direct S3 GET does
    (urllib3, CLIENT_READ_BYTES at a time), so the two figures compare the servers, not two client libraries."""
    digest, got = hashlib.sha256(), 0
    response = http.request("GET", f"{url}/models/{BIG}", preload_content=False)
    try:
        assert response.status == 200, response.status
        for chunk in response.stream(CLIENT_READ_BYTES):
            got += len(chunk)
            if check:
                digest.update(chunk)
    finally:
        response.release_conn()
    if check:
        assert digest.hexdigest() == check == response.headers["etag"].strip('"')
    return got


def _filled(path: Path) -> None:
    """Wait for the API's background fill of the cache after a first download (no timed run overlaps one)."""
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"the cache was not filled: no {path}"
        time.sleep(0.05)


def _read_every_record(store, bucket: str) -> list[dict]:
    """The naive listing: read every metadata.json on every call (what a registry without a cache does)."""
    records = [store.get_json(bucket=bucket, key=o.key) for o in store.list(bucket=bucket)
               if o.key.endswith("/metadata.json")]
    return sorted(records, key=lambda r: (r["created_at"], r["version"]), reverse=True)[:1000]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


@contextmanager
def _api_server(ctx):
    """The API in its own process (`scv serve`) on a free loopback port."""
    port = free_ports(1)[0]
    settings = ctx.settings
    env = {**os.environ, "MINIO_ENDPOINT": settings.minio_endpoint, "MINIO_ACCESS_KEY": settings.minio_access_key,
           "MINIO_SECRET_KEY": settings.minio_secret_key.get_secret_value(),
           "MINIO_MODEL_BUCKET": settings.minio_model_bucket, "MINIO_DATASET_BUCKET": settings.minio_dataset_bucket,
           "SCV_DATA_DIR": str(ctx.scratch / "api"), "SCV_STORAGE_TIMEOUT": "30", "SCV_LOG_LEVEL": "warning",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))}
    log = open(ctx.scratch / "api.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=ctx.scratch, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {ctx.scratch / 'api.log'}")
            time.sleep(0.2)
        yield url, server.pid
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
