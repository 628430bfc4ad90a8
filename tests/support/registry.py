"""Models stored in the registry without training: their objects and, given a catalog, their rows."""

import models
from app.db.engine import Database
from app.registry import publishing
from app.storage.s3 import Store, store_from_settings
from tests.support.catalog import add_models

TINY = [{"type": "Flatten"}, {"type": "Linear", "out_features": 5}]


def put_model(store: Store, bucket: str, version: str, *, db: Database | None = None, dataset: str = "mnist",
              created_at: str | None = None, blob: bytes | None = None, labels: dict | None = None,
              accuracy: float | None = 0.5, sha256: str | None = None, layers: list | None = None,
              input_shape: tuple[int, int, int] = (1, 4, 4)) -> bytes:
    """Store a small valid model (TINY on 1×4×4 images unless `layers` and `input_shape` say otherwise) as a
    finished job does: metadata.json, model.safetensors, then (given `db`) its catalog rows: the model, its
    succeeded job, its labels."""
    layers = models.resolve_layers(layers or TINY, input_shape=input_shape, num_classes=3)
    norm = {"mean": [0.5] * input_shape[0], "std": [0.25] * input_shape[0]}
    net = models.seeded_model(layers, seed=len(version))
    if blob is None:
        blob = models.save_model(net, layers=layers, input_shape=list(input_shape), classes=["a", "b", "c"],
                                 normalization=norm, dataset=dataset, version=version)
    metadata = publishing.describe(
        blob, version=version, dataset=dataset, created_at=created_at, request={"epochs": 1}, labels=labels or {},
        layers=layers, metrics={"test_accuracy": accuracy}, history=[], classes=["a", "b", "c"], normalization=norm,
        input_shape=list(input_shape), epochs=1, num_parameters=sum(p.numel() for p in net.parameters()))
    if sha256 is not None:
        metadata["sha256"] = sha256  # metadata that does not describe the file
    publishing.store_objects(store, bucket=bucket, metadata=metadata, blob=blob)
    if db is not None:
        add_models(db, [publishing.model_values(metadata)])
    return blob


def store_model(client, version: str, *, dataset: str, layers: list | None, seed: int = 0) -> None:
    """Store an untrained model as the worker stores a trained one: metadata.json first, the model last."""
    manifest = client.get(f"/datasets/{dataset}").json()
    shape, classes = manifest["image_shape"], manifest["classes"]
    resolved = models.resolve_layers(layers, input_shape=tuple(shape), num_classes=len(classes))
    norm = {"mean": manifest["mean"], "std": manifest["std"]}
    blob = models.save_model(models.seeded_model(resolved, seed=seed), layers=resolved, input_shape=shape,
                             classes=classes, normalization=norm, dataset=dataset, version=version)
    settings = client.app.state.settings
    metadata = publishing.describe(blob, version=version, dataset=dataset, layers=resolved, classes=classes,
                                   normalization=norm, input_shape=shape, metrics={}, history=[], request={})
    publishing.store_objects(store_from_settings(settings), bucket=settings.minio_model_bucket, metadata=metadata,
                             blob=blob)
    add_models(client.app.state.db, [publishing.model_values(metadata)])


def keys(store: Store, bucket: str, prefix: str = "") -> list[str]:
    return [o.key for o in store.list(bucket=bucket, prefix=prefix)]


def listed(client) -> list[str]:
    return [i["version"] for i in client.get("/models", params={"limit": 1000}).json()["items"]]


def settle(registry, timeout: float) -> None:
    """Wait until the background cache fills the registry queued so far have ended (they run one at a time)."""
    registry._filler.submit(lambda: None).result(timeout)
