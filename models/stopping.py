"""Early stopping: judge each epoch's metric, keep the best epoch (and, when asked, its weights), say when to stop."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop once `metric` has not improved for `patience` epochs in a row; `restore_best`: end with the weights
    (and metrics) of the best epoch rather than the last."""

    metric: str = "val_accuracy"
    patience: int = 5
    restore_best: bool = False


@dataclass
class EarlyStopping:
    """The judge of one run. Its state (best value and epoch, epochs without improvement) follows from the run's
    history alone, so a resumed run rebuilds it with `replay`; only the best weights travel in the checkpoint."""

    config: EarlyStoppingConfig
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # on the CPU; with restore_best only

    def __post_init__(self) -> None:
        if self.config.metric not in METRICS:
            raise ValueError(f"unknown early-stopping metric {self.config.metric!r}; use one of {', '.join(METRICS)}")
        if self.config.patience < 1:
            raise ValueError(f"early-stopping patience {self.config.patience} must be at least 1 epoch")

    def judge(self, record: dict[str, float]) -> bool:
        """Take a finished epoch's history entry; True when it is the best so far (strictly better)."""
        value = record[self.config.metric]
        lower = self.config.metric.endswith("_loss")
        if self.best is None or (value < self.best if lower else value > self.best):
            self.best, self.best_epoch, self.stale = value, record["epoch"], 0
            return True
        self.stale += 1
        return False

    def replay(self, history: list[dict[str, float]]) -> None:
        """Judge the epochs a checkpoint's history holds, as the interrupted run did."""
        for record in history:
            self.judge(record)

    @property
    def stop(self) -> bool:
        """Whether the run should end now."""
        return self.stale >= self.config.patience

    def reason(self) -> str:
        return (f"{self.config.metric} did not improve for {self.stale} epochs (patience {self.config.patience}); "
                f"best {self.best:.6g} at epoch {self.best_epoch}")
