"""The model registry: list, describe, stream, delete, expire and load the models stored in the model bucket."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import islice

from app.errors import Conflict, IntegrityError, InvalidInput, NotFound, ObjectMissing, ServiceError
from app.jobs.service import TERMINAL, JobNotFound, JobRecords
from app.settings import Settings
from app.storage import layout
from app.storage.s3 import ObjectInfo, Store

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024  # one ranged GET of a download, sent to the client as one piece
PARALLEL = 2  # ranged GETs in flight per download: S3 reads overlap each other and the send to the client
SUMMARY_FIELDS = ("dataset", "sha256", "epochs", "num_parameters")  # besides version, size, accuracy, created_at
REFRESH_S = 30.0  # at most this long between full LISTs of the bucket (see ModelRegistry)
READERS = 16  # concurrent metadata.json reads when a listing meets models it has not seen yet


class ModelNotFound(NotFound):
    def __init__(self, version: str, detail: str | None = None, **extra):
        super().__init__(detail or f"no model with version {version!r}; list models with GET /models",
                         version=version, **extra)


class ModelExpired(NotFound):
    slug = "model-expired"

    def __init__(self, version: str, expires_at: str):
        super().__init__(f"model {version!r} expired at {expires_at} (SCV_MODEL_TTL_DAYS); it is no longer "
                         "served and storage removes it", version=version, expires_at=expires_at)


class ModelNotReady(Conflict):
    slug = "model-not-ready"

    def __init__(self, version: str, status: str):
        super().__init__(f"model {version!r} is not stored yet: its training job is {status}; follow it at "
                         f"/train/{version}", version=version, job_status=status, job=f"/train/{version}")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _identity(info: ObjectInfo) -> tuple:
    # A re-created version has a new ETag or upload time; LIST and HEAD agree to the second.
    stamp = info.last_modified.replace(microsecond=0) if info.last_modified else None
    return info.etag, info.size, stamp


class ModelRegistry:
    """Storage is the source of truth; completed models are immutable, so what was read once is kept.

    Listing: each model's metadata.json is read once per model object (ETag, size, upload time). Which
    models exist comes from a full recursive LIST at most every `refresh_s` seconds and, on the calls in
    between, from a LIST of the version prefixes alone (one short entry per version) plus a HEAD of each
    version not yet known to hold a model or to have ended without one. New models therefore show at
    once; a model deleted by another process disappears at once on MinIO (its prefix vanishes) and within
    `refresh_s` on SeaweedFS (which keeps empty prefixes); downloads always check storage. Items are
    newest first by `created_at`, then version; the cursor is an opaque token of the last item's sort key,
    so walking the pages returns every model once even while models are added or deleted.
    """

    def __init__(self, *, store: Store, settings: Settings, records: JobRecords, loaded_models: int = 4,
                 refresh_s: float = REFRESH_S):
        self.store, self.bucket, self.records = store, settings.minio_model_bucket, records
        self.ttl_days, self.refresh_s, self._capacity = settings.model_ttl_days, refresh_s, loaded_models
        self._summaries: dict[str, tuple[tuple, dict]] = {}  # version -> (object identity, summary)
        self._loaded: OrderedDict[str, tuple[str, object, dict]] = OrderedDict()  # version -> (sha, net, meta)
        self._models: dict[str, ObjectInfo] = {}  # version -> its model object
        self._ended: set[str] = set()  # versions that hold no model and will not get one
        self._refreshed_at = -math.inf
        self._lock, self._readers = threading.Lock(), ThreadPoolExecutor(8 * PARALLEL, "scv-model-read")

    # -- retention -------------------------------------------------------------------------------

    def apply_retention(self) -> None:
        """Install the bucket lifecycle rule for SCV_MODEL_TTL_DAYS (removed at 0); warn when refused."""
        try:
            self.store.set_expiry(bucket=self.bucket, days=self.ttl_days)
        except ServiceError as exc:
            level = logging.WARNING if self.ttl_days > 0 else logging.DEBUG
            log.log(level, "bucket lifecycle for %s not set (%s); the service still hides expired models",
                    self.bucket, exc.detail)

    def expires_at(self, created_at: str) -> str | None:
        """When a model created at `created_at` expires; None when models are kept (TTL 0)."""
        if self.ttl_days <= 0:
            return None
        return _iso(datetime.fromisoformat(created_at) + timedelta(days=self.ttl_days))

    def _expired(self, summary: dict) -> bool:
        return self.ttl_days > 0 and self.expires_at(summary["created_at"]) <= _iso(datetime.now(UTC))

    # -- listing ---------------------------------------------------------------------------------

    def list(self, *, dataset: str | None = None, limit: int = 50, after: tuple[str, str] | None = None,
             ) -> tuple[list[dict], bool]:
        """Unexpired models newest first, after the `sort_key` `after`; and whether more follow the page."""
        objects = self._model_objects()
        with self._lock:
            self._summaries = {v: c for v, c in self._summaries.items() if v in objects}
            known = {v: c[1] for v, c in self._summaries.items() if c[0] == _identity(objects[v])}
        summaries, unseen = list(known.values()), [info for v, info in objects.items() if v not in known]
        if unseen:
            with ThreadPoolExecutor(max_workers=READERS) as pool:
                summaries += [s for s in pool.map(self._summary, unseen, [False] * len(unseen)) if s]
        chosen = sorted((s for s in summaries if (dataset is None or s["dataset"] == dataset)
                         and (after is None or sort_key(s) < after) and not self._expired(s)),
                        key=sort_key, reverse=True)
        return [{**s, "expires_at": self.expires_at(s["created_at"])} for s in chosen[:limit]], len(chosen) > limit

    def _model_objects(self) -> dict[str, ObjectInfo]:
        if time.monotonic() - self._refreshed_at > self.refresh_s:
            started, models, seen = time.monotonic(), {}, set()
            for obj in self.store.list(bucket=self.bucket):
                version, _, name = obj.key.partition("/")
                if _valid(version):
                    seen.add(version)
                    if name == layout.MODEL_FILE:
                        models[version] = obj
            with self._lock:  # an ended version with objects again is checked anew: it may be re-created
                self._models, self._ended, self._refreshed_at = models, self._ended - seen, started
            return dict(models)
        present = {p.key[:-1] for p in self.store.list(bucket=self.bucket, recursive=False)
                   if p.key.endswith("/") and _valid(p.key[:-1])}
        with self._lock:
            for version in self._models.keys() - present:  # a vanished prefix: deleted elsewhere
                del self._models[version]
            self._ended &= present
            unknown = present - self._models.keys() - self._ended
        if unknown:
            with ThreadPoolExecutor(max_workers=READERS) as pool:
                list(pool.map(self._check, unknown))
        with self._lock:
            return dict(self._models)

    def _check(self, version: str) -> None:
        try:
            info = self.store.stat(bucket=self.bucket, key=layout.key(version, layout.MODEL_FILE))
        except ObjectMissing:
            if self._job_ended(version):
                with self._lock:
                    self._ended.add(version)
            return
        with self._lock:
            self._models[version] = info

    def _job_ended(self, version: str) -> bool:
        """True when no model will appear under `version`: its job ended, or it has no job (a leftover)."""
        try:
            return self.records.get(version).get("status") in TERMINAL
        except JobNotFound:
            return True

    def _summary(self, info: ObjectInfo, strict: bool = True) -> dict | None:
        """The listing fields of one model object, read once; not strict: None when gone or damaged."""
        version, identity = layout.version_of(info.key), _identity(info)
        cached = self._summaries.get(version)
        if cached and cached[0] == identity:
            return cached[1]
        try:
            meta = self._metadata(version)
            summary = {"version": version, **{k: meta.get(k) for k in SUMMARY_FIELDS}, "size_bytes": info.size,
                       "test_accuracy": (meta.get("metrics") or {}).get("test_accuracy"),
                       "created_at": _iso(datetime.fromisoformat(meta["created_at"]))}  # sortable as text
        except (IntegrityError, ObjectMissing) as exc:
            if strict:
                raise
            log.warning("model %s left out of the listing: %s", version, exc.detail)
            return None
        with self._lock:
            self._summaries[version] = (identity, summary)
        return summary

    def _metadata(self, version: str) -> dict:
        try:
            meta = self.store.get_json(bucket=self.bucket, key=layout.key(version, layout.METADATA_FILE))
            datetime.fromisoformat(meta["created_at"])
            return meta
        except ObjectMissing:
            detail = f"model {version!r} has no metadata.json: it is incomplete or damaged; delete it"
        except (ValueError, TypeError, KeyError):
            detail = f"metadata.json of model {version!r} is malformed; delete the model"
        raise IntegrityError(detail, version=version)

    # -- one model -------------------------------------------------------------------------------

    def get(self, version: str) -> dict:
        """The listing item of one served model; 404 unknown or expired, 409 while it trains."""
        try:
            info = self.store.stat(bucket=self.bucket, key=layout.key(version, layout.MODEL_FILE))
        except ObjectMissing:
            with self._lock:
                self._models.pop(version, None)
            raise self._absent(version) from None
        with self._lock:  # what a download learns, the listing knows too
            self._models[version] = info
            self._ended.discard(version)
        summary = self._summary(info)
        expires = self.expires_at(summary["created_at"])
        if self._expired(summary):
            raise ModelExpired(version, expires)
        return {**summary, "expires_at": expires}

    def _absent(self, version: str) -> ServiceError:
        try:
            record = self.records.get(version)
        except JobNotFound:
            return ModelNotFound(version)
        if record["status"] not in TERMINAL:
            return ModelNotReady(version, record["status"])
        return ModelNotFound(version, f"model {version!r} does not exist: its training job ended "
                             f"{record['status']} without one (see /train/{version})", job=f"/train/{version}")

    def metadata(self, version: str) -> dict:
        """The full metadata of a served model, plus `expires_at`."""
        summary = self.get(version)
        return {**self._metadata(version), "expires_at": summary["expires_at"]}

    def stream(self, version: str, *, offset: int, length: int) -> Iterator[bytes]:
        """Bytes `offset` to `offset + length` of the model file, in order, by up to PARALLEL ranged GETs."""
        key, end = layout.key(version, layout.MODEL_FILE), offset + length

        def fetch(start: int) -> bytes:  # one piece per chunk: fewer hops to the event loop than 1 MiB pieces
            return b"".join(self.store.iter_bytes(bucket=self.bucket, key=key, offset=start,
                                                  length=min(CHUNK_BYTES, end - start), chunk_size=CHUNK_BYTES))

        starts = iter(range(offset, end, CHUNK_BYTES))
        pending = deque(self._readers.submit(fetch, start) for start in islice(starts, PARALLEL))
        try:  # memory: about PARALLEL + 1 chunks per download
            while pending:
                chunk = pending.popleft().result()
                pending.extend(self._readers.submit(fetch, start) for start in islice(starts, 1))
                yield chunk
        finally:  # also when the client went away; reads in flight finish and release their connections
            for future in pending:
                future.cancel()

    def delete(self, version: str) -> int:
        """Remove every object under `<version>/`; 409 while its job is queued or running."""
        if not self._job_ended(version):
            record = self.records.get(version)
            raise Conflict(f"the training job of {version!r} is {record['status']}; cancel it first with "
                           f"DELETE /train/{version}", version=version, job=f"/train/{version}")
        removed = self.store.delete_prefix(bucket=self.bucket, prefix=layout.prefix(version))
        with self._lock:  # and from every in-process cache
            for cache in (self._summaries, self._loaded, self._models):
                cache.pop(version, None)
            self._ended.discard(version)
        self.records.forget(version)
        if not removed:
            raise ModelNotFound(version)
        return removed

    # -- loading ---------------------------------------------------------------------------------

    def load(self, version: str):
        """The network (eval mode) and metadata of a served model, verified against its sha256; a small LRU."""
        from app.registry.inference import verified_model  # torch is heavy: only the paths that run networks import it

        summary = self.get(version)  # exists now and has not expired, also for a cached network
        with self._lock:
            if (hit := self._loaded.get(version)) and hit[0] == summary["sha256"]:
                self._loaded.move_to_end(version)
                return hit[1], hit[2]
        meta = {**self._metadata(version), "expires_at": summary["expires_at"]}
        blob = self.store.get_bytes(bucket=self.bucket, key=layout.key(version, layout.MODEL_FILE),
                                    size=summary["size_bytes"], parallel=PARALLEL)
        net, meta = verified_model(version, blob, meta)
        with self._lock:
            self._loaded[version] = (summary["sha256"], net, meta)
            self._loaded.move_to_end(version)
            while len(self._loaded) > self._capacity:
                self._loaded.popitem(last=False)
        return net, meta


def _valid(version: str) -> bool:
    try:
        return layout.validate_version(version) == version
    except InvalidInput:
        return False


def sort_key(item: dict) -> tuple[str, str]:
    """The listing order's key (newest first means descending): `created_at`, then version."""
    return item["created_at"], item["version"]
