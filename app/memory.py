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


def return_freed_memory() -> None:
    """Hand large freed buffers back to the kernel at once (glibc), as the API process does.

    A request's activations are tens of MB each (predict, CKA-set analyses). By default glibc raises its mmap
    threshold to the largest buffer freed so far, after which such buffers come from the request thread's arena,
    and up to twice that size stays there when they are freed: one more batch, per threadpool thread. A fixed
    threshold keeps every buffer above it in its own mapping, unmapped when freed.
    """
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed, which stops the dynamic one
