"""`scv catalog rebuild`: re-create the model catalog from the bucket, and import the job records of earlier releases.

Reads `<version>/metadata.json` and `<version>/job.json` objects and the bucket's listing; never a model file. A
model row is made only where `<version>/model.safetensors` is listed with the size its metadata records. Job
records that earlier releases kept as `<version>/job.json` become `jobs` rows once; a row already in the catalog
is never overwritten, so the queue's own records win and a second run changes nothing.

An old record that was `queued` stays queued: the new workers run it, as the old release would have after a
restart. One that was `running` becomes `failed`: its worker belonged to the old release and is gone. A job
whose model is stored is `succeeded` whatever its record says; one that claims success without a valid model
becomes `failed`. A stored model without a job record gets a `succeeded` job made from its metadata. The objects
of a version whose catalog job did not succeed (failed, cancelled, queued or running) are never listed as a model.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError
from sqlalchemy import select

from app.db.engine import Database
from app.db.tables import Deletion, Job, Model
from app.errors import ObjectMissing
from app.jobs.queue import import_job
from app.jobs.record import JobRecord
from app.registry import catalog, publishing
from app.storage import layout
from app.storage.s3 import ObjectInfo, Store

log = logging.getLogger(__name__)

READERS = 16  # concurrent GETs of metadata.json / job.json
STATUSES = frozenset({"queued", "running", "succeeded", "failed", "cancelled"})
LOST = ("the worker was lost: the job was running under a release without the catalog, and `scv catalog rebuild` "
        "imported it; train it again")
NO_MODEL = "the job's model is missing or damaged in the bucket (found by `scv catalog rebuild`); train it again"


def rebuild_catalog(*, store: Store, db: Database, bucket: str) -> dict[str, int]:
    """Re-create the model catalog from `bucket` and import its job.json records; idempotent. Returns counts:
    models added, updated and removed (their model object is gone), jobs imported, objects skipped."""
    objects = _objects(store, bucket)
    with db.read() as conn:
        rows = {row.version: row._mapping for row in conn.execute(select(*catalog.LISTED, Model.meta.label("meta")))}
        jobs = dict(conn.execute(select(Job.version, Job.status)).all())
        deleting = set(conn.execute(select(Deletion.version)).scalars())
    counts = dict.fromkeys(("models_added", "models_updated", "models_removed", "jobs_imported", "skipped"), 0)

    with ThreadPoolExecutor(READERS) as pool:
        # Only a job that succeeded (or a model with no job row) has a model: one still queued or running lists
        # its own when it ends, and the objects of one that failed or was cancelled are leftovers, never a model.
        described = [v for v, names in objects.items() if {layout.MODEL_FILE, layout.METADATA_FILE} <= names.keys()
                     and v not in deleting and jobs.get(v, "succeeded") == "succeeded"]
        metas = dict(zip(described, pool.map(lambda v: _metadata(store, bucket, v, objects[v]), described),
                         strict=True))
        unrecorded = [v for v, names in objects.items() if layout.JOB_FILE in names and v not in jobs
                      and v not in deleting]
        records = dict(zip(unrecorded, pool.map(lambda v: _job_record(store, bucket, v), unrecorded), strict=True))
    counts["skipped"] = sum(meta is None for meta in metas.values()) + sum(r is None for r in records.values())
    models = {v: publishing.model_values(meta) for v, meta in metas.items() if meta is not None}
    # A listed model whose object is not listed is asked for again: the listing may be stale.
    gone = [v for v in rows.keys() - models.keys() - deleting if layout.MODEL_FILE not in objects.get(v, {})
            and not store.exists(bucket=bucket, key=layout.key(v, layout.MODEL_FILE))]

    imports = [_job_values(record, models.get(version))
               for version, record in records.items() if record is not None]
    imports += [_job_values(None, models[version])  # a model with no job record at all
                for version in models.keys() - jobs.keys() - records.keys()]
    counts["skipped"] += sum(job is None for job in imports)

    with db.write() as conn:
        for version, values in models.items():
            if version not in rows:
                counts["models_added"] += publishing.list_models(conn, [values["meta"]], if_absent=True)
            elif {key: rows[version][key] for key in values} != values:
                publishing.relist_model(conn, values["meta"])
                counts["models_updated"] += 1
        for version in gone:
            counts["models_removed"] += publishing.unlist_model(conn, version)
        for job in imports:
            if job is not None:
                counts["jobs_imported"] += import_job(conn, job)
    log.info("catalog rebuilt from bucket %s: %s", bucket, counts)
    return counts


def _objects(store: Store, bucket: str) -> dict[str, dict[str, ObjectInfo]]:
    """version -> {object name: info} for the objects the catalog is made from."""
    found: dict[str, dict[str, ObjectInfo]] = {}
    for info in store.list(bucket=bucket):
        version, _, name = info.key.partition("/")
        if name in (layout.MODEL_FILE, layout.METADATA_FILE, layout.JOB_FILE) and layout.is_valid_version(version):
            found.setdefault(version, {})[name] = info
    return found


def _metadata(store: Store, bucket: str, version: str, names: dict[str, ObjectInfo]) -> dict | None:
    """The model's metadata.json when it describes the listed model object, else None (logged)."""
    try:
        meta = store.get_json(bucket=bucket, key=layout.key(version, layout.METADATA_FILE))
        values = publishing.model_values(meta)
        sha = values["sha256"]
        if values["version"] != version or not isinstance(values["dataset"], str):
            raise ValueError("it names another version or no dataset")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise ValueError("its sha256 is not a sha256")
        if values["size_bytes"] != names[layout.MODEL_FILE].size:
            raise ValueError(f"it records {values['size_bytes']} bytes but the model object has "
                             f"{names[layout.MODEL_FILE].size}")
        return meta
    except ObjectMissing:
        reason = "metadata.json vanished while rebuilding"
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = f"metadata.json does not describe the model object: {exc}"
    log.warning("model %s left out of the catalog: %s", version, reason)
    return None


def _job_record(store: Store, bucket: str, version: str) -> dict | None:
    """An earlier release's job.json, checked; None (logged) when it is not one."""
    try:
        record = store.get_json(bucket=bucket, key=layout.key(version, layout.JOB_FILE))
        if not (isinstance(record, dict) and record.get("version") == version and record.get("status") in STATUSES
                and isinstance(record.get("dataset"), str)):
            raise ValueError("no version, dataset or status")
        record["created_at"] = catalog.iso(record["created_at"])
        return record
    except ObjectMissing:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("job record %s/job.json not imported: %s", version, exc)
        return None


def _job_values(record: dict | None, model: dict | None) -> JobRecord | None:
    """The record of a job no worker holds, from an old job record and/or the model it produced; None (logged)
    when the old record is not one."""
    meta = model["meta"] if model else {}
    record = record or {**meta, "created_at": model["created_at"]}  # no record: the metadata says what it can
    status, error, finished = record.get("status"), record.get("error"), record.get("finished_at")
    if model is not None:
        status, error, finished = "succeeded", None, finished or model["created_at"]
    elif status == "running":
        status, error, finished = "failed", LOST, layout.utcnow()
    elif status == "succeeded":
        status, error = "failed", NO_MODEL
    epochs = (record.get("request") or {}).get("epochs", 1)
    done = {"epoch": epochs, "epochs": epochs, "step": 0, "steps": 0, "fraction": 1.0}
    try:
        return JobRecord(
            version=record["version"], dataset=record["dataset"], status=status,
            request=record.get("request") or {}, labels=record.get("labels") or meta.get("labels") or {},
            layers=record.get("layers") or [], progress=record.get("progress") or done,
            metrics=record.get("metrics"), history=record.get("history") or [], error=error,
            attempts=1 if record.get("started_at") or status != "queued" else 0, worker=record.get("worker"),
            stopped_early=record.get("stopped_early") if model is not None else None,
            created_at=record["created_at"], started_at=record.get("started_at"),
            finished_at=finished if status != "queued" else None)
    except ValidationError as exc:
        log.warning("job record %s not imported: %s", record["version"], str(exc).replace("\n", "; "))
        return None
