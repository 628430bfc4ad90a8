"""A model's file (or a snapshot's): downloads from storage or the local cache, cache fills after them, loaded
networks, predictions."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

from app.errors import IntegrityError, ServiceError
from app.storage.cache import CacheMismatch

log = logging.getLogger(__name__)
# A download's piece, read from storage and sent to the client as one. Below glibc's mmap threshold once it has
# adapted, so that pieces come from memory the allocator reuses: 4 MiB pieces were mapped afresh each, and the page
# faults of reading into them took about 40% of the API's CPU in a first download.
CHUNK_BYTES = 512 * 1024


class Files:
    """The registry's model files."""

    def cached_file(self, model: dict, *, fetch: bool = False) -> Path | None:
        """The local cache's verified copy of a served model's file (`get()`'s or `snapshot()`'s item), marked used;
        None when the cache does not hold it. With `fetch`, a copy it lacks is fetched from storage, verified by
        sha256 and kept first (None only when the file is larger than the cache may keep)."""
        sha, size, key = model["sha256"], model["size_bytes"], model["key"]
        if fetch and self.cache.keeps(sha, size):
            try:
                with self.cache.entry(sha, size, fetch=lambda: self.stream(key, offset=0, length=size)) as path:
                    return path
            except CacheMismatch as exc:
                raise self._mismatch(model, exc) from None
        if (file := self.cache.open(sha, size)) is None:
            return None
        # Verified and marked used; the response opens it again by name. Entries go least recently used first, so
        # an eviction meanwhile takes this one only from a cache bounded to little more than it.
        file.close()
        return self.cache.path(sha)

    def download(self, model: dict) -> Iterator[bytes]:
        """A served model's whole file (`get()`'s or `snapshot()`'s item) from storage, as it comes; once it has gone
        out, a fill of the cache in the background (fetched again, verified by sha256, kept).

        A model whose stored bytes a fill found to differ from the catalog's is verified on the way from then on,
        its last chunk held back until the sha256 matches, and cached when it does.
        """
        stored = self.stream(model["key"], offset=0, length=model["size_bytes"])
        return self._verified(model, stored) if model["sha256"] in self._suspect else self._then_cached(model, stored)

    def stream(self, key: str, *, offset: int, length: int) -> Iterator[bytes]:
        """Bytes `offset` to `offset + length` of a model file (`key`: a served item's) in storage, in order, from
        one GET."""
        return self.store.iter_bytes(bucket=self.bucket, key=key, offset=offset, length=length,
                                     chunk_size=CHUNK_BYTES)

    def _then_cached(self, model: dict, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """`chunks`, then the model queued for a background fill of the cache (one at a time, off the request:
        hashing and writing 2 cores' worth of bytes inline would halve the first download)."""
        try:
            yield from chunks
        finally:
            chunks.close()
        if self.cache.keeps(model["sha256"], model["size_bytes"]):
            with suppress(RuntimeError):  # shutting down (close()): a later download fills it
                self._filler.submit(self._fill, model)

    def close(self) -> None:
        """Let a fill in progress end (seconds), drop queued ones: the next download queues them again; the compute
        thread finishes what it runs and takes nothing more."""
        self._filler.shutdown(wait=True, cancel_futures=True)
        self._computer.shutdown(wait=False, cancel_futures=True)

    def _fill(self, model: dict) -> None:
        try:
            self.cached_file(model, fetch=True)  # cached already (an earlier fill), or fetched, verified and kept
        except IntegrityError as exc:  # the stored bytes are not the catalog's
            self._suspect.add(model["sha256"])
            log.error("%s; its downloads are verified on the way from now on", exc.detail)
        except ServiceError as exc:  # storage went away meanwhile: a later download fills it
            log.warning("model file %s not cached: %s", model["key"], exc.detail)

    def _verified(self, model: dict, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The whole file passed through the cache: kept once its sha256 matched; the last chunk only then."""
        try:
            yield from self.cache.fill(model["sha256"], model["size_bytes"], chunks)
        except CacheMismatch as exc:
            raise self._mismatch(model, exc) from None
        self._suspect.discard(model["sha256"])

    def _mismatch(self, model: dict, exc: CacheMismatch) -> IntegrityError:
        return IntegrityError(f"model file {model['key']!r} in storage has sha256 {exc.got_sha256} ({exc.got_size} "
                              f"bytes), but the catalog records {exc.sha256} ({exc.size} bytes); it is refused",
                              version=model["version"])

    def load(self, version: str, epoch: int | None = None):
        """The network (eval mode) and metadata of a served model, or of its snapshot of `epoch`, verified against
        its sha256; a small LRU."""
        from app.registry.inference import verified_model  # torch is heavy: only the paths that run networks import it

        # exists now and has not expired, also for a cached network
        model = self.get(version) if epoch is None else self.snapshot(version, epoch)
        if (hit := self._loaded.get((version, epoch))) and hit[0] == model["sha256"]:
            return hit[1], hit[2]
        blob = self._model_bytes(model)
        net, meta = verified_model(version, blob, {**model["meta"], "expires_at": model["expires_at"],
                                                   "sha256": model["sha256"]}, device=self.device)
        self._loaded.put((version, epoch), (model["sha256"], net, meta))
        return net, meta

    def predict(self, version: str, decode: Callable) -> list[dict]:
        """What the served model makes of the images `decode(input_shape)` gives, as inference.predict says."""
        from app.registry.inference import predict

        model, meta = self.load(version)
        return self.computed(predict, model, meta, decode(meta["input_shape"]), max_bytes=self.max_bytes,
                             precision=self.precision, cpu_bf16=self.cpu_bf16)

    def computed(self, fn: Callable, /, *args, **kwargs):
        """`fn(*args, **kwargs)` on the registry's compute thread (see `ModelRegistry`), waiting its turn."""
        if threading.current_thread().name.startswith("scv-compute"):  # already there
            return fn(*args, **kwargs)
        return self._computer.submit(fn, *args, **kwargs).result()

    def _model_bytes(self, model: dict) -> bytes:
        """A served item's file through the local cache; a cached copy whose bytes changed on disk is fetched again."""
        sha, size, key = model["sha256"], model["size_bytes"], model["key"]
        for _ in range(2):
            try:
                with self.cache.entry(sha, size, fetch=lambda: self.stream(key, offset=0, length=size)) as path:
                    blob = path.read_bytes()
            except CacheMismatch as exc:
                raise self._mismatch(model, exc) from None
            if hashlib.sha256(blob).hexdigest() == sha:
                break
            self.cache.discard(sha)
        return blob  # the loader checks it again, and says why it refuses a mismatch
