"""Deterministic kernels on CUDA, and the ops torch reports as having none, for a run that says whether it repeats."""

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

NONDETERMINISTIC = "does not have a deterministic implementation"  # how torch words the alert for such an op


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA, torch's deterministic kernels wherever it has them (restored after); a no-op on the CPU."""
    if device.type != "cuda":
        yield
        return
    # cuBLAS reads this when it first makes a handle: a job's own process sets it before its first product
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without one warns (see watch_alerts) instead
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    # filling every new tensor with NaN finds reads of unwritten memory; a kernel per allocation is too dear here
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark
        torch.utils.deterministic.fill_uninitialized_memory = fill


@contextlib.contextmanager
def watch_alerts(found: set[str]) -> Iterator[None]:
    """Collect the ops that torch reports as having no deterministic kernel while the block runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        text = str(warning.message)
        if NONDETERMINISTIC in text:
            found.add(text.split(" ", 1)[0])
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
