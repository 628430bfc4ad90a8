"""The model registry: page, describe, stream, delete, expire, alias and load the models in the catalog."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.db.cursors import decode_cursor, encode_cursor
from app.db.engine import Database
from app.errors import Conflict, IntegrityError, InvalidInput, NotFound, ServiceError
from app.lru import LRU
from app.registry import catalog, publishing
from app.settings import Settings
from app.storage import layout
from app.storage.cache import CacheMismatch, LocalCache
from app.storage.s3 import Store

log = logging.getLogger(__name__)

# A download's piece, read from storage and sent to the client as one. Below glibc's mmap threshold once it has
# adapted, so that pieces come from memory the allocator reuses: 4 MiB pieces were mapped afresh each, and the page
# faults of reading into them took about 40% of the API's CPU in a first download.
CHUNK_BYTES = 512 * 1024
# What a page's cursor may hold after its sort name: the sort value, then the version.
CURSOR_KEYS = {"created_at": (str,), "test_accuracy": (float, int, type(None))}


class ModelNotFound(NotFound):
    def __init__(self, version: str, detail: str | None = None, **extra):
        super().__init__(detail or f"no model with version {version!r}; list models with GET /models",
                         version=version, **extra)


class ModelExpired(NotFound):
    slug = "model-expired"

    def __init__(self, version: str, expires_at: str):
        super().__init__(f"model {version!r} expired at {expires_at} (SCV_MODEL_TTL_DAYS); it is no longer "
                         "served and is being removed", version=version, expires_at=expires_at)


class ModelNotReady(Conflict):
    slug = "model-not-ready"

    def __init__(self, version: str, status: str):
        super().__init__(f"model {version!r} is not stored yet: its training job is {status}; follow it at "
                         f"/train/{version}", version=version, job_status=status, job=f"/train/{version}")


class AliasNotFound(NotFound):
    slug = "alias-not-found"

    def __init__(self, alias: str):
        super().__init__(f"no alias {alias!r}; list aliases with GET /aliases", alias=alias)


class ModelAliased(Conflict):
    slug = "model-aliased"

    def __init__(self, version: str, aliases: list[str]):
        named = ", ".join(repr(a) for a in aliases)
        super().__init__(f"model {version!r} is named by alias {named}; move or delete the alias first "
                         "(DELETE /aliases/{alias})", version=version, aliases=aliases)


def checked_name(name: str, *, field: str) -> str:
    """A version or alias name that follows the version pattern, else 422 naming `field`."""
    try:
        return layout.validate_version(name)
    except InvalidInput as exc:
        raise InvalidInput(exc.detail.replace("invalid version", f"invalid {field}"), field=field) from None


class ModelRegistry:
    """The catalog says which models exist; storage holds their bytes.

    A model row appears in the transaction that marks its job `succeeded`, after its objects are stored, so
    every listed model has its bytes. A delete removes the rows first and the objects after, recording the
    deletion until every object is gone: an interrupted delete is finished by `finish_deletions()`.
    """

    def __init__(self, *, store: Store, settings: Settings, db: Database, loaded_models: int = 4):
        self.store, self.bucket, self.db = store, settings.minio_model_bucket, db
        self.ttl_days, self._loaded = settings.model_ttl_days, LRU(loaded_models)  # version -> (sha, net, meta)
        self.cache = LocalCache.from_settings(settings)  # shared with the dataset cache, and with other processes
        self._filler = ThreadPoolExecutor(1, "scv-cache-fill")  # fills after downloads, one at a time
        self._suspect: set[str] = set()  # sha256 of models whose stored bytes a fill found to differ
        # where and how loaded networks run
        self.device, self.precision, self.cpu_bf16 = settings.device, settings.precision, settings.cpu_bf16

    # -- retention -------------------------------------------------------------------------------

    def apply_retention(self) -> None:
        """Remove a bucket lifecycle rule of earlier releases: it would expire aliased models too."""
        try:
            self.store.set_expiry(bucket=self.bucket, days=0)
        except ServiceError as exc:
            log.debug("bucket lifecycle of %s not cleared: %s", self.bucket, exc.detail)

    def expires_at(self, created_at: str, *, aliased: bool = False) -> str | None:
        """When a model created at `created_at` expires; None when models are kept or an alias names it."""
        if self.ttl_days <= 0 or aliased:
            return None
        return catalog.iso(datetime.fromisoformat(created_at) + timedelta(days=self.ttl_days))

    def _fresh_since(self) -> str | None:
        """Models created before this have expired (unless aliased); None when models are kept."""
        return catalog.iso(datetime.now(UTC) - timedelta(days=self.ttl_days)) if self.ttl_days > 0 else None

    # -- pages -----------------------------------------------------------------------------------

    def page(self, *, dataset: str | None = None, labels: dict[str, str] | Sequence[tuple[str, str]] = (),
             sort: str = "created_at", limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Unexpired models, highest `sort` first, and the cursor of the next page (None on the last); every
        label (key, value) must match."""
        scope = f"models/{sort}"
        after = decode_cursor(cursor, sort=scope, kinds=(CURSOR_KEYS[sort], (str,))) if cursor else None
        pairs = sorted(labels.items() if isinstance(labels, dict) else labels)
        with self.db.read() as conn:
            rows, more = catalog.page_models(conn, dataset=dataset, labels=pairs,
                                             sort=sort, limit=limit, after=after, fresh_since=self._fresh_since())
            named = catalog.aliases_by_version(conn, [row.version for row in rows])
        items = [self._item(row._mapping, named.get(row.version, [])) for row in rows]
        return items, encode_cursor(scope, *catalog.sort_key(items[-1], sort)) if more else None

    def _item(self, row, aliases: list[str]) -> dict:
        fields = {name: row[name] for name in (c.key for c in catalog.LISTED)}
        return {**fields, "aliases": aliases, "expires_at": self.expires_at(row["created_at"], aliased=bool(aliases))}

    # -- names -----------------------------------------------------------------------------------

    def resolve(self, name: str, *, field: str = "version") -> str:
        """The version `name` stands for: itself, or for `@alias` the version the alias names now."""
        if not name.startswith("@"):
            return checked_name(name, field=field)
        alias = checked_name(name[1:], field=field)
        with self.db.read() as conn:
            record = catalog.get_alias(conn, alias)
        if record is None:
            raise AliasNotFound(alias)
        return record["version"]

    def put_alias(self, alias: str, version: str) -> dict:
        """Create the alias or move it to `version`; 404 naming the version when no such model is served."""
        checked_name(alias, field="alias")
        checked_name(version, field="version")
        with self.db.write() as conn:
            row = catalog.model_row(conn, version, lock=True)  # a delete of it waits, then sees the alias
            if row is None:
                raise self._absent(conn, version)
            if self._expired(row.created_at, aliased=bool(catalog.aliases_of(conn, version))):
                raise ModelExpired(version, self.expires_at(row.created_at))
            return catalog.put_alias(conn, alias, version, updated_at=layout.utcnow())

    def get_alias(self, alias: str) -> dict:
        """One alias record; 404 when unknown."""
        with self.db.read() as conn:
            record = catalog.get_alias(conn, checked_name(alias, field="alias"))
        if record is None:
            raise AliasNotFound(alias)
        return record

    def list_aliases(self) -> list[dict]:
        """Every alias record, by name."""
        with self.db.read() as conn:
            return catalog.list_aliases(conn)

    def delete_alias(self, alias: str) -> None:
        """Remove an alias (the model stays); 404 when unknown."""
        with self.db.write() as conn:
            if not catalog.delete_alias(conn, checked_name(alias, field="alias")):
                raise AliasNotFound(alias)

    # -- one model -------------------------------------------------------------------------------

    def get(self, version: str) -> dict:
        """The listing item of one served model (a version `resolve()` checked) plus its metadata (`meta`); 404
        unknown or expired, 409 while it trains."""
        with self.db.read() as conn:
            row = catalog.model_row(conn, version)
            if row is None:
                raise self._absent(conn, version)
            aliases = catalog.aliases_of(conn, version)
        if self._expired(row.created_at, aliased=bool(aliases)):
            raise ModelExpired(version, self.expires_at(row.created_at))
        return {**self._item(row._mapping, aliases), "meta": row.meta}

    def _expired(self, created_at: str, *, aliased: bool) -> bool:
        return not aliased and self.ttl_days > 0 and created_at < self._fresh_since()

    def _absent(self, conn, version: str) -> ServiceError:
        status = catalog.job_status(conn, version)
        if status is None:
            return ModelNotFound(version)
        if status in catalog.ACTIVE:
            return ModelNotReady(version, status)
        return ModelNotFound(version, f"model {version!r} does not exist: its training job ended {status} "
                             f"without one (see /train/{version})", job=f"/train/{version}")

    def metadata(self, version: str) -> dict:
        """The full metadata of a served model (from the catalog), plus `expires_at`."""
        model = self.get(version)
        return {**model["meta"], "expires_at": model["expires_at"]}

    def cached_file(self, model: dict, *, fetch: bool = False) -> Path | None:
        """The local cache's verified copy of a served model's file (`get()`'s item), marked used; None when the
        cache does not hold it. With `fetch`, a copy it lacks is fetched from storage, verified by sha256 and kept
        first (None only when the file is larger than the cache may keep)."""
        sha, size, version = model["sha256"], model["size_bytes"], model["version"]
        if fetch and self.cache.keeps(sha, size):
            try:
                with self.cache.entry(sha, size, fetch=lambda: self.stream(version, offset=0, length=size)) as path:
                    return path
            except CacheMismatch as exc:
                raise self._mismatch(version, exc) from None
        if (file := self.cache.open(sha, size)) is None:
            return None
        # Verified and marked used; the response opens it again by name. Entries go least recently used first, so
        # an eviction meanwhile takes this one only from a cache bounded to little more than it.
        file.close()
        return self.cache.path(sha)

    def download(self, model: dict) -> Iterator[bytes]:
        """A served model's whole file (`get()`'s item) from storage, as it comes; once it has gone out, a fill of
        the cache in the background (fetched again, verified by sha256, kept).

        A model whose stored bytes a fill found to differ from the catalog's is verified on the way from then on,
        its last chunk held back until the sha256 matches, and cached when it does.
        """
        stored = self.stream(model["version"], offset=0, length=model["size_bytes"])
        return self._verified(model, stored) if model["sha256"] in self._suspect else self._then_cached(model, stored)

    def stream(self, version: str, *, offset: int, length: int) -> Iterator[bytes]:
        """Bytes `offset` to `offset + length` of the model file in storage, in order, from one GET."""
        return self.store.iter_bytes(bucket=self.bucket, key=layout.key(version, layout.MODEL_FILE), offset=offset,
                                     length=length, chunk_size=CHUNK_BYTES)

    def _then_cached(self, model: dict, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """`chunks`, then the model queued for a background fill of the cache (one at a time, off the request:
        hashing and writing 2 cores' worth of bytes inline would halve the first download)."""
        try:
            yield from chunks
        finally:
            chunks.close()
        if self.cache.keeps(model["sha256"], model["size_bytes"]):
            try:
                self._filler.submit(self._fill, model)
            except RuntimeError:  # shutting down (close()): a later download fills it
                pass

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the background fills queued so far have ended."""
        self._filler.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Let a fill in progress end (seconds), drop queued ones: the next download queues them again."""
        self._filler.shutdown(wait=True, cancel_futures=True)

    def _fill(self, model: dict) -> None:
        sha, size, version = model["sha256"], model["size_bytes"], model["version"]
        try:
            with self.cache.entry(sha, size, fetch=lambda: self.stream(version, offset=0, length=size)):
                pass  # cached already (an earlier fill), or fetched, verified and kept
        except CacheMismatch as exc:
            self._suspect.add(sha)
            log.error("%s; its downloads are verified on the way from now on", self._mismatch(version, exc).detail)
        except ServiceError as exc:  # storage went away meanwhile: a later download fills it
            log.warning("model %s not cached: %s", version, exc.detail)

    def _verified(self, model: dict, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The whole file passed through the cache: kept once its sha256 matched; the last chunk only then."""
        try:
            yield from self.cache.fill(model["sha256"], model["size_bytes"], chunks)
        except CacheMismatch as exc:
            raise self._mismatch(model["version"], exc) from None
        self._suspect.discard(model["sha256"])

    def _mismatch(self, version: str, exc: CacheMismatch) -> IntegrityError:
        return IntegrityError(f"model file of {version!r} in storage has sha256 {exc.got_sha256} ({exc.got_size} "
                              f"bytes), but the catalog records {exc.sha256} ({exc.size} bytes); it is refused",
                              version=version)

    # -- deletion --------------------------------------------------------------------------------

    def delete(self, version: str) -> None:
        """Delete the model, its job record and every object under `<version>/`.

        409 while its job is queued or running, or while an alias names it. The rows go first, in one
        transaction that records the deletion; the objects after; an interrupted removal is finished by
        `finish_deletions()`, and the version (a checked one) is neither listed nor served meanwhile.
        """
        with self.db.write() as conn:
            catalog.model_row(conn, version, lock=True)  # an alias being put on it commits first, or waits
            if aliases := catalog.aliases_of(conn, version):
                raise ModelAliased(version, aliases)
            if (status := catalog.job_status(conn, version)) in catalog.ACTIVE:
                raise Conflict(f"the training job of {version!r} is {status}; cancel it first with "
                               f"DELETE /train/{version}", version=version, job=f"/train/{version}")
            if found := publishing.remove_version(conn, version) or catalog.deletion_pending(conn, version):
                catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
        if not found:  # no rows: objects a rebuild has not imported, or leftovers, may still be removed
            if not self._has_objects(version):
                raise ModelNotFound(version)
            with self.db.write() as conn:
                if catalog.job_status(conn, version) is None:  # not submitted meanwhile
                    catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
        self._loaded.pop(version)
        self._remove_objects(version)

    def _has_objects(self, version: str) -> bool:
        return next(iter(self.store.list(bucket=self.bucket, prefix=layout.prefix(version))), None) is not None

    def _remove_objects(self, version: str) -> None:
        publishing.delete_version_objects(self.store, bucket=self.bucket, version=version)
        with self.db.write() as conn:
            catalog.end_deletion(conn, version)

    def finish_deletions(self) -> int:
        """Start the deletion of expired models and remove the objects of every deletion in progress (also
        ones another process began and did not finish); returns how many were finished. Idempotent."""
        if (fresh_since := self._fresh_since()) is not None:
            with self.db.read() as conn:
                due = catalog.expired_versions(conn, created_before=fresh_since)
            if due:
                with self.db.write() as conn:  # asked again: an alias may have been put on one meanwhile
                    for version in catalog.expired_versions(conn, created_before=fresh_since):
                        publishing.remove_version(conn, version)
                        catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
                        log.info("model %s expired (SCV_MODEL_TTL_DAYS=%d); removing it", version, self.ttl_days)
        with self.db.read() as conn:
            pending = catalog.pending_deletions(conn)
        for version in pending:
            self._loaded.pop(version)
            self._remove_objects(version)
        return len(pending)

    # -- loading ---------------------------------------------------------------------------------

    def load(self, version: str):
        """The network (eval mode) and metadata of a served model, verified against its sha256; a small LRU."""
        from app.registry.inference import verified_model  # torch is heavy: only the paths that run networks import it

        model = self.get(version)  # exists now and has not expired, also for a cached network
        if (hit := self._loaded.get(version)) and hit[0] == model["sha256"]:
            return hit[1], hit[2]
        blob = self._model_bytes(version, sha=model["sha256"], size=model["size_bytes"])
        net, meta = verified_model(version, blob, {**model["meta"], "expires_at": model["expires_at"]},
                                   device=self.device)
        self._loaded.put(version, (model["sha256"], net, meta))
        return net, meta

    def _model_bytes(self, version: str, *, sha: str, size: int) -> bytes:
        """The model file through the local cache; a cached copy whose bytes changed on disk is fetched again."""
        for _ in range(2):
            try:
                with self.cache.entry(sha, size, fetch=lambda: self.stream(version, offset=0, length=size)) as path:
                    blob = path.read_bytes()
            except CacheMismatch as exc:
                raise self._mismatch(version, exc) from None
            if hashlib.sha256(blob).hexdigest() == sha:
                break
            self.cache.discard(sha)
        return blob  # the loader checks it again, and says why it refuses a mismatch
