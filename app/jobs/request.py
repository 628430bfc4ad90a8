"""The training request: a network design and its hyperparameters, as `POST /train` and the dashboard take it."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.storage.layout import VERSION_PATTERN

LABEL_KEY = r"^[a-z0-9][a-z0-9._-]{0,62}$"
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=128, pattern=r"^[ -~]*$")]  # printable ASCII


class TrainRequest(BaseModel):
    """A network design and its hyperparameters (SPEC §5 Training)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(..., examples=["mnist"], max_length=64)
    version: str | None = Field(None, pattern=VERSION_PATTERN, examples=["mnist-baseline-1"])
    layers: list[dict[str, Any]] | None = Field(None, max_length=256, examples=[[
        {"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]])
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    train_subset: int | None = Field(None, ge=1)
    snapshot_every: int = Field(1, ge=0, le=100, description="keep the weights at initialisation and after every "
                                "this many epochs and the last, as snapshots of the model; 0: none")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None, description="training precision; absent: SCV_PRECISION. The precision used is recorded")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16,
                                               examples=[{"owner": "alice", "experiment": "lr-sweep"}])
