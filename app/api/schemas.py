"""The API's response bodies (and the bodies it reads besides a training request): pydantic only, no FastAPI, so that
the routes declare them and `app.client` parses with them without importing the server."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.record import JobRecord


class FieldError(BaseModel):
    field: str = Field(description="the field as the client sent it, e.g. `layers[2].kernel_size`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details; some problems add members such as `field`, `errors` or `version`."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    field: str | None = Field(None, description="the field at fault, when one is")
    errors: list[FieldError] | None = Field(None, description="every field at fault (422)")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    warning: str | None = Field(None, description="set when the service runs open, without SCV_API_TOKEN")


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next` as `cursor` for the following page."""

    items: list[JobRecord]
    next: str | None


class ModelItem(BaseModel):
    version: str
    dataset: str | None
    created_at: str
    size_bytes: int
    sha256: str | None
    test_accuracy: float | None
    epochs: int | None
    num_parameters: int | None
    expires_at: str | None = Field(description="null when models are kept (SCV_MODEL_TTL_DAYS=0) or aliased")
    labels: dict[str, str]
    aliases: list[str] = Field(description="the aliases naming this model")


class ModelPage(BaseModel):
    """One page of models, highest `sort` first; pass `next` as `cursor` for the following page."""

    items: list[ModelItem]
    next: str | None


class SnapshotItem(BaseModel):
    epoch: int = Field(description="0: the weights at initialisation")
    size_bytes: int
    sha256: str
    metrics: dict[str, Any] | None = Field(description="that epoch's history entry; null for epoch 0")


class SnapshotList(BaseModel):
    """The weights the training job kept (`snapshot_every`), epoch 0 first."""

    items: list[SnapshotItem]


class ModelMetadata(BaseModel):
    """Everything the catalog knows of a model (its `metadata.json`); models stored by earlier releases may lack the
    optional members, and later ones may add members."""

    model_config = ConfigDict(extra="allow")
    version: str
    dataset: str | None
    created_at: str
    sha256: str
    size_bytes: int
    request: dict[str, Any] | None = Field(None, description="the job's request, every recipe field resolved")
    labels: dict[str, str] | None = None
    layers: list[dict[str, Any]] | None = Field(None, description="the layers, every argument resolved")
    metrics: dict[str, float | None] | None = None
    history: list[dict[str, Any]] | None = Field(None, description="one entry per finished epoch")
    snapshots: list[SnapshotItem] | None = None
    classes: list[str] | None = Field(None, description="`classes[i]` names label i")
    normalization: dict[str, list[float]] | None = Field(None, description="`mean` and `std` per channel")
    input_shape: list[int] | None = Field(None, description="[C, H, W]")
    epochs: int | None = None
    num_parameters: int | None = None
    libraries: dict[str, str | None] | None = Field(None, description="versions of the libraries that made it")
    expires_at: str | None = None


class ImagesBody(BaseModel):
    """Images as nested uint8 lists: C×H×W, or H×W for a one-channel model."""

    model_config = ConfigDict(extra="forbid")
    images: list[Any] = Field(..., examples=[[[[0, 255], [255, 0]]]])


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    label: int
    class_name: str = Field(..., alias="class")
    probabilities: list[float]


class Predictions(BaseModel):
    predictions: list[Prediction]


class AliasTarget(BaseModel):
    """The model an alias is to name."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(..., max_length=128, examples=["mnist-baseline-1"])


class AliasRecord(BaseModel):
    alias: str
    version: str
    updated_at: str


class Manifest(BaseModel):
    """What seeding recorded about one dataset; `classes[i]` names label i."""

    name: str
    classes: list[str]
    num_classes: int
    image_shape: list[int] = Field(description="[C, H, W]")
    mean: list[float] = Field(description="per channel, of the train split, on the [0, 1] scale")
    std: list[float]
    train_size: int
    test_size: int
    cka_per_class: int
    sha256: dict[str, str] = Field(description="object name -> sha256 hex of its stored bytes")
    sizes: dict[str, int]
    created_at: str
    format: str


class DatasetEntry(BaseModel):
    """One of the five datasets; the manifest's fields follow when it is seeded."""

    model_config = ConfigDict(extra="allow")
    name: str
    seeded: bool


class CKASampleSet(BaseModel):
    """The CKA sample set as JSON: the first k test images of each class, by class then index."""

    classes: list[str]
    image_shape: list[int] = Field(description="[C, H, W]")
    labels: list[int]
    indices: list[int] = Field(description="positions in the test split")
    images: list[Any] = Field(description="uint8 C×H×W nested lists, one per sample")


class Interval(BaseModel):
    """A percentile bootstrap interval over batches, one bound matrix each."""

    level: float
    low: list[list[float]]
    high: list[list[float]]


class LayerCKA(BaseModel):
    """CKA between every pair of recorded layers (rows: `layers`; columns: `other_layers` with `against`)."""

    layers: list[str]
    matrix: list[list[float]]
    estimator: Literal["linear", "debiased"]
    other_layers: list[str] | None = None
    n: int | None = Field(None, description="data=test: images used")
    batches: int | None = Field(None, description="data=test: minibatches averaged")
    ci: Interval | None = Field(None, description="data=test: 95 % percentile bootstrap over batches")


class Dynamics(BaseModel):
    """How each layer reached its final form: CKA of each layer at each kept epoch against the final model's."""

    layers: list[str]
    epochs: list[int]
    to_final: list[list[float]] = Field(description="one row per layer, one column per epoch")
    metrics: list[dict[str, Any] | None]
    estimator: Literal["linear", "debiased"]
    data: Literal["cka", "test"]
    n: int | None = None
    batches: int | None = None
    ci: Interval | None = Field(None, description="data=test: bounds per layer and epoch")


class Activations(BaseModel):
    """One CKA sample's output at one layer."""

    layer: int
    name: str
    sample: int
    label: int
    index: int = Field(description="the sample's position in the test split")
    shape: list[int]
    values: list[Any] = Field(description="nested lists of the output's shape")


class TopImages(BaseModel):
    """The test-split images whose mean activation of one channel is highest, highest first."""

    layer: int
    name: str
    channel: int
    indices: list[int]
    labels: list[int]
    activations: list[float]


class Pending(BaseModel):
    """An analysis a worker is computing: ask again at `Location` after `Retry-After` seconds."""

    status: Literal["queued", "running"]
    progress: float
    attempts: int
    detail: str
