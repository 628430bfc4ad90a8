"""Publishing models: the one writer of a model's objects (`metadata.json`, `model.safetensors`, its snapshots under
`snapshots/`) and its catalog row.

The worker, `scv catalog rebuild`, the tests and the benchmarks all publish and withdraw models through these
functions. A model object appears only once it is complete: its metadata is stored first, the model last. Its
row is listed after both, in a transaction the caller opens: the worker lists it in the one that records its job
`succeeded` (`JobQueue.finish(publish=...)`), so a worker that lost its job lists nothing. Snapshots are stored while
the job trains (each a model file, fenced by the attempt as the model is) and listed in the model's metadata.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from importlib.metadata import version as package_version
from typing import Any

from sqlalchemy import Connection, delete, insert, update

from app.db.engine import insert_absent
from app.db.tables import Job, Label, Model
from app.registry.catalog import iso
from app.storage import layout
from app.storage.s3 import Store

LIBRARIES = ("torch", "safetensors", "scv-trainer")


def describe(blob: bytes, *, version: str, dataset: str, created_at: str | None = None, **fields) -> dict[str, Any]:
    """A model's metadata.json: `fields` (request, layers, metrics, classes, normalization, …) and what the model
    file itself says (sha256, size), when it was made (now by default) and with which libraries."""
    return {"version": version, "dataset": dataset, "created_at": created_at or layout.utcnow(), **fields,
            "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob), "libraries": dict(_libraries())}


@functools.cache
def _libraries() -> dict[str, str]:
    return {name: package_version(name) for name in LIBRARIES}


def model_values(metadata: dict[str, Any]) -> dict[str, Any]:
    """The `models` row of a stored model, from its metadata.json."""
    return {"version": metadata["version"], "dataset": metadata["dataset"], "created_at": iso(metadata["created_at"]),
            "size_bytes": metadata["size_bytes"], "sha256": metadata["sha256"],
            "test_accuracy": (metadata.get("metrics") or {}).get("test_accuracy"), "epochs": metadata.get("epochs"),
            "num_parameters": metadata.get("num_parameters"), "labels": metadata.get("labels") or {},
            "meta": metadata}


# -- objects ---------------------------------------------------------------------------------------------------


def store_objects(store: Store, *, bucket: str, metadata: dict[str, Any], blob: bytes) -> None:
    """Store a model's metadata.json, then its model file: a model object exists only once it is complete."""
    version = metadata["version"]
    store.put_json(bucket=bucket, key=layout.key(version, layout.METADATA_FILE), value=metadata)
    store.put(bucket=bucket, key=layout.key(version, layout.MODEL_FILE), data=blob)


def store_snapshot(store: Store, *, bucket: str, version: str, epoch: int, blob: bytes) -> None:
    """Store the model file of a training job's weights after `epoch` (0: at initialisation)."""
    store.put(bucket=bucket, key=layout.snapshot_key(version, epoch), data=blob)


def store_analysis(store: Store, *, bucket: str, version: str, digest: str, result: dict) -> None:
    """Store an analysis result of the model `version` under its key (`digest`: what it depends on)."""
    store.put_json(bucket=bucket, key=layout.analysis_key(version, digest), value=result)


def delete_objects(store: Store, *, bucket: str, version: str, snapshots: bool = False) -> None:
    """Remove a model's objects (what an attempt that did not succeed may have stored), the model file first; with
    `snapshots`, its snapshots too (the job ended without a model: one queued again resumes with them)."""
    for name in (layout.MODEL_FILE, layout.METADATA_FILE):
        store.delete(bucket=bucket, key=layout.key(version, name))
    if snapshots:
        store.delete_prefix(bucket=bucket, prefix=layout.snapshots_prefix(version))


def ended_without_model(store: Store, *, bucket: str) -> Callable[[str, str], None]:
    """The job queue's `on_end`: an attempt was given up, the job is now `status`; remove what it stored (an
    analysis job stores its result only once complete: nothing)."""
    return lambda version, status: layout.is_analysis_job(version) or delete_objects(
        store, bucket=bucket, version=version, snapshots=status != "queued")


def delete_version_objects(store: Store, *, bucket: str, version: str) -> None:
    """Remove every object under `<version>/`: the model's, and checkpoints or old job records left with them."""
    store.delete_prefix(bucket=bucket, prefix=layout.prefix(version))


# -- rows --------------------------------------------------------------------------------------------------------


def list_models(conn: Connection, metadata: Iterable[dict[str, Any]], *, if_absent: bool = False) -> int:
    """List stored models in the catalog (their objects are complete), in the caller's transaction; with
    `if_absent`, a version listed already is left as it is. Returns how many rows were inserted."""
    rows = [model_values(meta) for meta in metadata]
    if if_absent:
        return sum(insert_absent(conn, Model, row) for row in rows)
    if rows:  # one executemany; it takes column names, and `meta` is the `metadata` column
        columns = [{"metadata" if key == "meta" else key: value for key, value in row.items()} for row in rows]
        conn.execute(insert(Model.__table__), columns)
    return len(rows)


def relist_model(conn: Connection, metadata: dict[str, Any]) -> None:
    """Rewrite a listed model's row from its metadata.json (`scv catalog rebuild`: the bucket says otherwise)."""
    conn.execute(update(Model).where(Model.version == metadata["version"]).values(**model_values(metadata)))


def unlist_model(conn: Connection, version: str) -> bool:
    """Take a model's row out of the catalog (its job stays); True when it was listed."""
    return conn.execute(delete(Model).where(Model.version == version)).rowcount > 0


def remove_version(conn: Connection, version: str) -> bool:
    """Delete the version's model, job and label rows; True when any existed."""
    removed = unlist_model(conn, version)
    for table in (Job, Label):
        removed |= conn.execute(delete(table).where(table.version == version)).rowcount > 0
    return removed
