"""The training loop's judge for a trial of an ASHA sweep: at each rung, ask the catalog whether the trial goes on."""

from __future__ import annotations

from collections.abc import Callable

from app.db.engine import Database
from app.sweeps import asha, catalog

Judge = Callable[[dict[str, float]], str | None]


def trial_judge(db: Database, version: str, *, epochs: int) -> Judge | None:
    """For the job `version`: None unless it is a trial of a sweep with ASHA; else the `judge` of models.train, which
    takes each finished epoch's history entry and, at a rung, returns why ASHA stops the trial there (None: go on)."""
    found = catalog.trial_of(db, version)
    if found is None or not found[0]["spec"].get("early_stop"):
        return None
    sweep, trial = found
    spec = sweep["spec"]
    metric, eta = spec["metric"], spec["early_stop"]["reduction_factor"]
    milestones = asha.rungs(min_epochs=spec["early_stop"]["min_epochs"], reduction_factor=eta, epochs=epochs)

    def judge(entry: dict[str, float]) -> str | None:
        if entry["epoch"] not in milestones:
            return None
        rung, value = milestones.index(entry["epoch"]), entry[metric]
        decision, reached = catalog.decide(db, sweep=sweep["id"], trial=trial, rung=rung, epoch=entry["epoch"],
                                           metric=value, reduction_factor=eta,
                                           higher_is_better=not metric.endswith("_loss"))
        if decision == asha.CONTINUE:
            return None
        return (f"ASHA stopped trial {trial} of sweep {sweep['id']} at rung {rung} (epoch {entry['epoch']}): its "
                f"{metric} {value:.6g} is not in the top 1/{eta} of the {reached} trials that reached the rung")

    return judge
