"""Learning-rate schedules stepped once per batch: constant, one-cycle (torch's OneCycleLR) and cosine with warmup."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

SCHEDULES = ("constant", "onecycle", "cosine")


def cosine_factor(step: int, *, total: int, warmup: int) -> float:
    """The fraction of the peak learning rate for optimizer step `step` (0-based) of `total`: a linear warmup over
    the first `warmup` steps ((step + 1) / warmup, so the last warmup step trains at the peak), then half a cosine
    from the peak towards 0 over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int, steps_per_epoch: int,
              warmup_epochs: float = 0.0) -> LRScheduler | None:
    """The scheduler for a run of `total_steps` optimizer steps whose peak is the optimizer's learning rate; None
    for `constant`. One-cycle is OneCycleLR's defaults with the momentum left as the request set it."""
    peak = optimizer.param_groups[0]["lr"]
    if schedule == "constant":
        return None
    if schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, cycle_momentum=False)
    if schedule == "cosine":
        warmup = round(warmup_epochs * steps_per_epoch)
        return LambdaLR(optimizer, lambda step: cosine_factor(step, total=total_steps, warmup=warmup))
    raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def state(scheduler: LRScheduler) -> dict[str, Any]:
    """The scheduler's state as JSON values (a checkpoint's header holds it; functions are rebuilt, not stored)."""
    return {key: value for key, value in scheduler.state_dict().items() if not callable(value)}
