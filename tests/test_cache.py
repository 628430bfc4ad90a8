"""The local cache on real files: bound and LRU order, verification, damage on disk, restarts, several processes."""

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.storage import cache as cache_module
from app.storage.cache import SEAL_NS, STALE_PART_S, CacheMismatch, LocalCache

SIZE = 1000


def blob(tag: int, size: int = SIZE) -> tuple[str, bytes]:
    data = hashlib.shake_256(str(tag).encode()).digest(size)
    return hashlib.sha256(data).hexdigest(), data


def pieces(data: bytes, piece: int = 300) -> list[bytes]:
    return [data[i : i + piece] for i in range(0, len(data), piece)]


def put(cache: LocalCache, tag: int, size: int = SIZE) -> str:
    sha, data = blob(tag, size)
    assert b"".join(cache.fill(sha, len(data), pieces(data))) == data
    return sha


def held(cache: LocalCache) -> list[str]:
    """The entries' digests, least recently used first; nothing else (no temp files) in the directory."""
    names = sorted(os.listdir(cache.directory)) if cache.directory.exists() else []
    entries = cache.entries()
    assert sorted(name for _, name, _ in entries) == names
    return [name.removesuffix(".safetensors") for _, name, _ in entries]


def used(cache: LocalCache, sha: str, size: int = SIZE) -> bytes:
    with cache.open(sha, size) as file:
        return file.read()


def test_filled_past_its_bound_the_least_recently_used_go_first(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=3 * SIZE)
    first, second, third = (put(cache, tag) for tag in range(3))
    time.sleep(0.01)  # coarse clocks: uses must be told apart
    assert used(cache, first) == blob(0)[1]  # now the most recently used
    time.sleep(0.01)
    fourth = put(cache, 3)
    assert held(cache) == [third, first, fourth]  # second was the least recently used
    time.sleep(0.01)
    fifth = put(cache, 4)
    assert held(cache) == [first, fourth, fifth]
    assert sum(size for _, _, size in cache.entries()) <= cache.max_bytes
    assert cache.open(second, SIZE) is None and cache.open(third, SIZE) is None


def test_bytes_that_do_not_match_are_never_completed_nor_kept(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    sha, data = blob(1)
    changed = data[:-1] + bytes([data[-1] ^ 1])
    received = []
    with pytest.raises(CacheMismatch) as caught:
        received.extend(cache.fill(sha, SIZE, pieces(changed)))
    assert len(b"".join(received)) < SIZE  # the last piece was held back: the consumer never had it all
    assert caught.value.got_size == SIZE and caught.value.got_sha256 == hashlib.sha256(changed).hexdigest()
    with pytest.raises(CacheMismatch):
        list(cache.fill(sha, SIZE, pieces(data + b"x")))  # one byte too many
    assert held(cache) == [] and cache.open(sha, SIZE) is None


def test_a_file_changed_on_disk_after_verification_is_never_served(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    sha = put(cache, 1)
    path = cache.path(sha)
    with open(path, "r+b") as file:  # one byte flipped in place: same name, same size
        file.seek(10)
        byte = file.read(1)
        file.seek(10)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert cache.open(sha, SIZE) is None and not path.exists()  # refused and removed
    put(cache, 1)  # fetched and verified again
    assert used(cache, sha) == blob(1)[1]

    path.write_bytes(blob(1)[1][:-1])  # truncated
    assert cache.open(sha, SIZE) is None and not path.exists()
    path.write_bytes(blob(1)[1])  # the right bytes, copied in by hand: never verified by the cache
    assert cache.open(sha, SIZE) is None
    put(cache, 1)
    assert cache.open(sha, SIZE + 1) is None  # the size asked for disagrees with the file


def test_a_new_process_on_the_same_directory_serves_what_was_verified_and_keeps_the_order(tmp_path):
    first_run = LocalCache(tmp_path / "cache", max_bytes=2 * SIZE)
    old, recent = put(first_run, 1), None
    time.sleep(0.01)
    recent = put(first_run, 2)
    restarted = LocalCache(tmp_path / "cache", max_bytes=2 * SIZE)
    assert used(restarted, old) == blob(1)[1] and used(restarted, recent) == blob(2)[1]
    time.sleep(0.01)
    newest = put(restarted, 3)
    assert held(restarted) == [recent, newest]  # `old` was used before `recent`, so it went


def test_an_entry_larger_than_the_bound_is_served_but_not_kept(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=SIZE)
    kept = put(cache, 1)
    sha, data = blob(2, size=2 * SIZE)
    assert b"".join(cache.fill(sha, len(data), pieces(data))) == data
    with cache.entry(sha, len(data), fetch=lambda: pieces(data)) as path:
        assert path.read_bytes() == data
    assert not path.exists()
    assert held(cache) == [kept]  # and it pushed nothing out


def test_entry_fetches_once_then_serves_the_file(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    sha, data = blob(1)
    fetches = []

    def fetch():
        fetches.append(1)
        return pieces(data)

    for _ in range(3):
        with cache.entry(sha, SIZE, fetch=fetch) as path:
            assert path.read_bytes() == data
    assert len(fetches) == 1 and path == cache.path(sha)
    assert os.stat(path).st_mtime_ns == SEAL_NS


def test_a_reader_that_stops_early_keeps_nothing_and_stops_the_producer(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    sha, data = blob(1)
    closed = []

    def producer():
        try:
            yield from pieces(data)
        finally:
            closed.append(True)

    stream = cache.fill(sha, SIZE, producer())
    next(stream)
    stream.close()  # the client went away
    assert closed == [True] and held(cache) == []


def test_concurrent_fills_of_one_entry_in_a_process_write_one_copy(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    sha, data = blob(1)
    first = cache.fill(sha, SIZE, pieces(data))
    got = [next(first)]  # under way: its temp file is open
    assert b"".join(cache.fill(sha, SIZE, pieces(data))) == data  # served and verified, nothing written
    assert len(os.listdir(cache.directory)) == 1 and cache.open(sha, SIZE) is None
    with pytest.raises(CacheMismatch):  # the one beside it is verified all the same
        list(cache.fill(sha, SIZE, pieces(data[::-1])))
    got.extend(first)
    assert b"".join(got) == data and used(cache, sha) == data and held(cache) == [sha]
    with cache.entry(sha, SIZE, fetch=lambda: pytest.fail("fetched again")) as path:
        assert path.read_bytes() == data


def test_temp_files_of_dead_processes_are_removed_once_stale(tmp_path, monkeypatch):
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * SIZE)
    cache.directory.mkdir()
    part = cache.directory / ".abc-1.part"
    part.write_bytes(b"x" * 10)
    assert cache.entries() == [] and part.exists()  # maybe another process's download in flight
    later = time.time() + STALE_PART_S + 60
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(time=lambda: later, time_ns=time.time_ns))
    assert cache.entries() == [] and not part.exists()


def _fill_many(directory: str, tags: list[int]) -> list[str]:
    cache = LocalCache(Path(directory), max_bytes=4 * SIZE)
    return [put(cache, tag) for tag in tags]


def test_processes_sharing_the_directory_keep_it_consistent_and_bounded(tmp_path):
    directory = tmp_path / "cache"
    work = [list(range(0, 12)), list(range(6, 18)), list(range(12, 24))]  # overlapping: same entries raced
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        list(pool.map(_fill_many, [str(directory)] * 3, work))
    cache = LocalCache(directory, max_bytes=4 * SIZE)
    entries = cache.entries()
    assert 1 <= len(entries) <= 4 and sum(size for _, _, size in entries) <= cache.max_bytes
    assert not [name for name in os.listdir(directory) if name.endswith(".part")]
    for _, name, _ in entries:  # every survivor is whole and verified
        sha = name.removesuffix(".safetensors")
        assert hashlib.sha256(used(cache, sha)).hexdigest() == sha
