"""glibc's malloc, set for job processes."""

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

