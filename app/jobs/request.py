"""The training request: a network design and its hyperparameters, as `POST /train` and the dashboard take it."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from app.storage.layout import VERSION_PATTERN

LABEL_KEY = r"^[a-z0-9][a-z0-9._-]{0,62}$"
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=128, pattern=r"^[ -~]*$")]  # printable ASCII


class Augment(BaseModel):
    """Random augmentation of the training images, drawn per image and epoch from the job's seed."""

    model_config = ConfigDict(extra="forbid")

    shift: int = Field(0, ge=0, le=8, description="translate up to this many pixels each way (edges repeated)")
    flip: bool = Field(False, description="flip half the images left to right")
    cutout: int = Field(0, ge=0, le=16, description="erase one square of this side (to the mean image)")


class EarlyStopping(BaseModel):
    """Stop once a metric has not improved for `patience` epochs."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["val_accuracy", "val_loss", "test_accuracy", "test_loss"]
    patience: int = Field(5, ge=1, le=100, description="epochs without improvement before the job stops")
    restore_best: bool = Field(False, description="end with the best epoch's weights and metrics, not the last's")


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
    # The recipe (SPEC §5): each field optional, its default the plain recipe jobs had before these fields existed.
    augment: Augment | None = Field(None, examples=[{"shift": 2, "flip": False, "cutout": 0}])
    schedule: Literal["constant", "onecycle", "cosine"] = Field(
        "constant", description="learning-rate schedule, stepped per batch; learning_rate is its peak")
    warmup_epochs: float = Field(0.0, ge=0, le=100, description="the cosine schedule's linear warmup, in epochs")
    label_smoothing: float = Field(0.0, ge=0, le=0.5)
    validation_split: float = Field(
        0.0, ge=0, le=0.5, description="share of the training split held out (per class, seeded); the history and "
        "metrics then carry val_loss and val_accuracy")
    early_stopping: EarlyStopping | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16,
                                               examples=[{"owner": "alice", "experiment": "lr-sweep"}])

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_is_cosine(cls, value: float, info: ValidationInfo) -> float:
        if value and info.data.get("schedule", "cosine") != "cosine":
            raise ValueError("warmup_epochs applies to the cosine schedule only: set schedule to cosine or omit it")
        if value > info.data.get("epochs", value):
            raise ValueError(f"warmup_epochs {value:g} is longer than the {info.data['epochs']} epochs of training")
        return value

    @field_validator("early_stopping")
    @classmethod
    def _judged_on_held_out_data(cls, value: EarlyStopping | None, info: ValidationInfo) -> EarlyStopping | None:
        if value and value.metric.startswith("val_") and not info.data.get("validation_split", 1):
            raise ValueError(f"metric {value.metric} needs a validation_split above 0 (or judge on test_accuracy "
                             "or test_loss)")
        return value
