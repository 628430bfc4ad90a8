"""Local cache: verified files keyed by sha256 under SCV_DATA_DIR, bounded in bytes, least recently used out first."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".safetensors"  # every cached file (dataset split, model) is one; earlier releases' dataset cache carries over
ENTRY = re.compile(r"[0-9a-f]{64}\.safetensors")
# A verified entry's mtime (2000-01-01T00:00:00Z). Any write to the file moves its mtime, so an entry whose mtime
# is not the seal was changed after it was verified and is never served.
SEAL_NS = 946_684_800 * 10**9
BACKLOG = 2  # chunks handed to the hashing thread and not yet absorbed
STALE_PART_S = 3600.0  # a temp file not written to for this long belongs to a process that died mid-download


class CacheMismatch(Exception):
    """Bytes fetched for an entry do not have the size and sha256 they were asked for."""

    def __init__(self, *, sha256: str, size: int, got_sha256: str, got_size: int):
        super().__init__(f"expected sha256 {sha256[:12]}…, {size} bytes; got {got_sha256[:12]}…, {got_size} bytes")
        self.sha256, self.size, self.got_sha256, self.got_size = sha256, size, got_sha256, got_size


class LocalCache:
    """Verified files named `<sha256>.safetensors` in one directory, shared by every process on the machine.

    A file enters only through `fill` or `entry`: written to a temp file while hashed, its mtime set to SEAL_NS,
    and renamed into place once its size and sha256 match, so readers never see a partial or unverified file. A
    file whose size or seal disagrees is removed, never served. Use is recorded in the atime, set explicitly
    (relatime and noatime mounts would not); after each insert the least recently used entries go until the total
    fits `max_bytes`. An entry larger than `max_bytes` is verified and served but not kept.
    """

    def __init__(self, directory: Path, *, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), max_bytes

    @classmethod
    def from_settings(cls, settings) -> LocalCache:
        """The cache of SCV_DATA_DIR/cache, bounded by SCV_CACHE_MAX_BYTES."""
        return cls(Path(settings.data_dir) / "cache", max_bytes=settings.cache_max_bytes)

    def path(self, sha256: str) -> Path:
        """Where the entry of `sha256` lives (it may not exist)."""
        if not SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.directory / f"{sha256}{SUFFIX}"

    def keeps(self, sha256: str, size: int) -> bool:
        """Whether an entry of this name and size would be kept (a valid digest, within the bound)."""
        return bool(SHA256.fullmatch(sha256 or "")) and size <= self.max_bytes

    def open(self, sha256: str, size: int) -> BinaryIO | None:
        """The verified entry, opened for reading and marked used; None when absent, or changed since verified."""
        if not SHA256.fullmatch(sha256 or ""):
            return None
        path = self.path(sha256)
        try:
            file = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            return None
        info = os.fstat(file.fileno())  # the opened file itself: a rename or eviction meanwhile cannot fool it
        if not (stat.S_ISREG(info.st_mode) and info.st_size == size and info.st_mtime_ns == SEAL_NS):
            file.close()
            log.warning("cache entry %s has %d bytes and mtime %d (expected %d and the seal); removing it",
                        path, info.st_size, info.st_mtime_ns, size)
            self._remove(path, info.st_ino)
            return None
        with suppress(OSError):  # a read-only mount: still served, only its place in the eviction order is stale
            os.utime(file.fileno(), ns=(time.time_ns(), SEAL_NS))
        return file

    def discard(self, sha256: str) -> None:
        """Remove the entry, found damaged by a reader after it was verified; absent is fine."""
        self.path(sha256).unlink(missing_ok=True)

    def fill(self, sha256: str, size: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks` passed through while hashed (and, when kept, written); the entry is published once verified.

        The last chunk is held back until the size and sha256 match: a consumer never receives every byte of a
        mismatching file (CacheMismatch is raised instead). Stopping early keeps nothing. While this process fills
        an entry, other fills of it here only verify: concurrent first downloads write one copy.
        """
        path = self.path(sha256) if self.keeps(sha256, size) else None
        with _filling_lock:
            if claimed := path is not None and path not in _filling:
                _filling.add(path)
        if not claimed:
            yield from _checked(sha256, size, chunks, out=None)
            return
        try:
            yield from self._written(sha256, size, chunks)
        finally:
            with _filling_lock:
                _filling.discard(path)

    @contextmanager
    def entry(self, sha256: str, size: int, fetch: Callable[[], Iterable[bytes]]) -> Iterator[Path]:
        """A path to the verified file: the cached entry, else `fetch()`ed, verified and kept when it fits.

        A file too large to keep lives in a temp file until the block ends (a memory map of it stays valid).
        """
        if (file := self.open(sha256, size)) is not None:
            file.close()
            yield self.path(sha256)
            return
        keep = self.keeps(sha256, size)
        tmp = self._temp(sha256 if SHA256.fullmatch(sha256 or "") else "unnamed")
        try:
            with open(tmp, "wb") as out:
                publish = (lambda: self._publish(out, tmp, sha256)) if keep else (lambda: None)
                for _ in _checked(sha256, size, fetch(), out=out, then=publish):
                    pass
            yield self.path(sha256) if keep else tmp
        finally:
            tmp.unlink(missing_ok=True)  # gone already once published

    def entries(self) -> list[tuple[int, str, int]]:
        """(last use in ns, file name, size) of every entry, least recently used first; stale temp files go."""
        found, now = [], time.time()
        try:
            scan = os.scandir(self.directory)
        except FileNotFoundError:
            return []
        with scan:
            for item in scan:
                try:  # another process may evict or publish while this one looks
                    info = item.stat(follow_symlinks=False)
                    # ctime: a temp file's mtime is the seal just before it is published
                    if item.name.endswith(".part") and now - info.st_ctime > STALE_PART_S:
                        os.unlink(item.path)
                except FileNotFoundError:
                    continue
                if ENTRY.fullmatch(item.name) and stat.S_ISREG(info.st_mode):
                    found.append((info.st_atime_ns, item.name, info.st_size))
        return sorted(found)

    # -- internals -------------------------------------------------------------------------------

    def _written(self, sha256: str, size: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
        tmp = self._temp(sha256)
        try:
            with open(tmp, "wb") as out:
                yield from _checked(sha256, size, chunks, out=out, then=lambda: self._publish(out, tmp, sha256))
        finally:
            tmp.unlink(missing_ok=True)  # gone already once published

    def _temp(self, sha256: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=f".{sha256[:16]}-", suffix=".part")
        os.close(fd)
        return Path(name)

    def _publish(self, out: BinaryIO, tmp: Path, sha256: str) -> None:
        # No fsync (+60 % on a cold 47 MB dataset load here): after a power cut, ext4 (data=ordered) and
        # XFS show a file whose data never reached the disk shorter than it was, and `open` refuses the size.
        out.flush()
        os.utime(tmp, ns=(time.time_ns(), SEAL_NS))
        os.replace(tmp, self.path(sha256))
        self._shrink(keep=self.path(sha256).name)

    def _shrink(self, *, keep: str) -> None:
        """Remove least recently used entries (never `keep`, just published) until the total fits the bound."""
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        for _, name, size in entries:
            if total <= self.max_bytes:
                break
            if name != keep:
                (self.directory / name).unlink(missing_ok=True)  # a reader holding it open keeps its bytes
                total -= size
                log.info("cache full (SCV_CACHE_MAX_BYTES=%d): evicted %s (%d bytes)", self.max_bytes, name, size)

    def _remove(self, path: Path, inode: int) -> None:
        # Only the file that was looked at: a verified copy another process just published stays.
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                path.unlink()


_filling: set[Path] = set()  # entries this process is writing now: concurrent first downloads write one copy
_filling_lock = threading.Lock()


def _checked(sha256: str, size: int, chunks: Iterable[bytes], *, out: BinaryIO | None,
             then: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """`chunks` passed through while hashed (and written to `out`); the last is yielded only after all of them
    verified and `then()` ran, else CacheMismatch.

    One helper thread hashes and another writes, each in order, so that work overlaps the producer's reads and the
    consumer's sends instead of adding to them (hashlib and file writes release the GIL).
    """
    source, digest, got, held = iter(chunks), hashlib.sha256(), 0, None
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(1, "scv-cache-hash") as hasher, ThreadPoolExecutor(1, "scv-cache-write") as writer:
        try:
            for chunk in source:
                got += len(chunk)
                pending.append(hasher.submit(digest.update, chunk))
                if out is not None:
                    pending.append(writer.submit(out.write, chunk))
                while len(pending) > 2 * BACKLOG:  # memory stays a few chunks when the disk is slower than the network
                    pending.popleft().result()
                if held is not None:
                    yield held
                held = chunk
            while pending:
                pending.popleft().result()
            if got != size or digest.hexdigest() != sha256:
                raise CacheMismatch(sha256=sha256, size=size, got_sha256=digest.hexdigest(), got_size=got)
            then()
            if held is not None:
                yield held
        finally:
            for future in pending:
                future.cancel()
            if hasattr(source, "close"):  # stop the producer's reads now, not at garbage collection
                source.close()
