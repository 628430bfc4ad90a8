"""The sweep request: a base training request, a space of fields to vary, how to draw from it, and how to judge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.request import LabelKey, LabelValue, TrainRequest

METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class EarlyStop(BaseModel):
    """Asynchronous successive halving: at epochs min_epochs·η^k a trial goes on only in the top 1/η of the trials
    that reached that epoch before it (η = reduction_factor)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha"]
    min_epochs: int = Field(1, ge=1, le=100, description="the first rung, in epochs")
    reduction_factor: int = Field(3, ge=2, le=16, description="η: each rung keeps the top 1/η")


class SweepRequest(BaseModel):
    """A family of training jobs studied together (SPEC §5 Sweeps)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=128, pattern=r"^[ -~]*$")
    base: TrainRequest = Field(..., description="a POST /train body without `version`: what every trial shares",
                               examples=[{"dataset": "mnist", "epochs": 3, "validation_split": 0.1}])
    space: dict[str, Any] = Field(
        default_factory=dict, max_length=10, examples=[{"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True},
                                                        "batch_size": [32, 64]}],
        description="field → list of values, or {min, max, log} for a number (random strategy); fields: "
        "learning_rate, batch_size, weight_decay, momentum, optimizer, epochs, label_smoothing, augment, schedule, "
        "layers (each value a whole layer list)")
    strategy: Literal["grid", "random"] = "grid"
    trials: int | None = Field(None, ge=1, le=1000, description="random: configurations drawn (each is trained "
                               "once per seed)")
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=100, description="every configuration "
                                                "is trained once per seed; absent: base.seed")
    metric: Literal[METRICS] | None = Field(None, description="what ranks trials; absent: val_accuracy when "
                                            "base.validation_split > 0, else test_accuracy")
    early_stop: EarlyStop | None = None
    random_seed: int | None = Field(None, ge=0, le=2**63 - 1, description="the random strategy's draw; absent: one "
                                    "is chosen and recorded, so the expansion can be repeated")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=14,
                                               description="added to every trial's labels, with sweep and trial")
