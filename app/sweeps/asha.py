"""Asynchronous successive halving (ASHA; Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"):
where a trial's rungs lie, and whether a trial that reaches one goes on. Pure: no I/O, no clock.

The stopping form (as Ray Tune's AsyncHyperBandScheduler and Optuna's SuccessiveHalvingPruner use it): trials are
not paused and promoted later; each one is judged once per rung, against the trials that reached that rung before it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

CONTINUE, STOP = "continue", "stop"


def rungs(*, min_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """The epochs at which a trial of `epochs` epochs is judged: min_epochs·η^k for k = 0, 1, … below its last epoch
    (a trial that reaches its last epoch has finished; there is nothing left to save)."""
    if min_epochs < 1 or reduction_factor < 2:
        raise ValueError("ASHA needs min_epochs >= 1 and reduction_factor >= 2")
    found, at = [], min_epochs
    while at < epochs:
        found.append(at)
        at *= reduction_factor
    return found


def kept(n: int, reduction_factor: int) -> int:
    """How many of the `n` trials at a rung rank high enough to go on: the top 1/η, and at least the best one (so
    the first trials to arrive are not all stopped for want of company)."""
    return max(1, n // reduction_factor)


def decide(*, trial: int, metric: float | None, reached: Mapping[int, float | None], reduction_factor: int,
           higher_is_better: bool = True) -> str:
    """CONTINUE when `trial`, reaching a rung with `metric`, ranks in the top `kept(n, η)` of the n trials that have
    reached this rung so far (`reached`: the earlier ones' metrics by trial number; the trial itself counts too),
    else STOP.

    Ranked by metric; a missing or NaN metric ranks last; equal metrics rank by trial number, lower first. The
    answer is thus a function of which trials reached the rung and their metrics, not of the order they came in.
    """
    field = {**reached, trial: metric}

    def rank(number: int) -> tuple:
        value = field[number]
        if value is None or math.isnan(value):
            return (1, 0.0, number)
        return (0, -value if higher_is_better else value, number)

    ordered = sorted(field, key=rank)
    return CONTINUE if ordered.index(trial) < kept(len(field), reduction_factor) else STOP
