"""glibc's malloc, set per kind of process."""

import ctypes
from contextlib import suppress


def keep_freed_memory() -> None:
    """Keep freed memory in the process (glibc), as every job process does; the bench does it too."""
    # torch frees and re-allocates the same MB-sized buffers every step; with glibc's defaults a fresh
    # child hands them back to the kernel and faults them in again (2-5x the page faults, +10-25% CPU).
    with suppress(OSError, AttributeError):  # not glibc
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD, glibc's largest


def share_freed_memory() -> None:
    """One malloc arena for all threads (glibc), as the API process has: a request reuses what the last one freed.

    A request's activation buffers are tens of MB (predict, analyses), and by default every threadpool thread that
    ran one keeps its own arena holding them once freed: a predict at the layer limits then grew the API by one to
    three batches more than the budget when it ran on another thread than the request before it. Buffers stay in
    the process, so repeated analyses do not fault them in again (a fixed 1 MiB mmap threshold bounded the growth
    too, but made a CKA-set matrix 1.5x slower).
    """
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
