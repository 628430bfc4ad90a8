"""Training precision and memory layout: which precision a device gets, and the autocast and format that apply it."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_bf16(override: bool | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (flag avx512_bf16 or amx_bf16), unless `override` says."""
    return bool(_CPU_BF16_FLAGS & _cpu_flags()) if override is None else override


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:  # Linux lists them; elsewhere we cannot tell cheaply, and float32 is the safe answer
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "flags:")
    return frozenset(line.partition(":")[2].split())


def resolve_precision(requested: str, device: str | torch.device, *, cpu_bf16: bool | None = None) -> str:
    """Turn auto | fp32 | bf16 into the precision to train in: auto is bf16 where `device` computes it natively
    (on CPU, `cpu_bf16` overrides what its flags say)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested  # bf16 without native support is slower than fp32 but still correct, so it is allowed
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.get_device_capability(device) >= (8, 0)  # Ampere and newer
    else:
        native = device.type == "cpu" and cpu_has_bf16(cpu_bf16)
    return "bf16" if native else "fp32"


def autocast(device: str | torch.device, precision: str, *, cache: bool = True) -> torch.autocast:
    """The context a forward pass (and its loss) runs in: bfloat16 autocast for bf16, a no-op for fp32.

    `cache=False` casts the weights afresh at each use, as CUDA graph capture needs (the same numbers).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r} is not resolved; pass it through resolve_precision first")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=cache)


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for networks with a Conv2d (faster on CPU and GPU at either precision), else the default."""
    has_conv = any(isinstance(module, nn.Conv2d) for module in model.modules())
    return torch.channels_last if has_conv else torch.contiguous_format
