"""Sweeps: expand a request into trials, queue them as ordinary jobs, report on them, cancel them."""

from __future__ import annotations

import json
import logging
import secrets
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from app.db.engine import Database
from app.errors import Conflict, InvalidInput, ServiceError
from app.jobs.queue import TERMINAL
from app.jobs.request import TrainRequest
from app.jobs.service import JobService, prepare
from app.storage import layout
from app.sweeps import catalog, expansion
from app.sweeps.request import SweepRequest

log = logging.getLogger(__name__)
MAX_LABELS = 16  # of a job: the base's, the sweep's, and `sweep` and `trial`


def new_id() -> str:
    """A fresh, time-sortable sweep ID such as `sweep-20261205-013000-3fa2c1`."""
    return f"sweep-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class SweepService:
    """Create, read, page and cancel sweeps; their trials go through the job service like any job."""

    def __init__(self, *, jobs: JobService, db: Database):
        self.jobs, self.db = jobs, db

    def create(self, body: SweepRequest) -> dict:
        """Check every trial as `POST /train` would, store the sweep, then queue its trials; 422 naming the field."""
        base = body.base
        if base.version is not None:
            raise InvalidInput("a sweep names its trials' versions itself (<sweep id>-t<n>): drop base.version",
                               field="base.version")
        metric = body.metric or ("val_accuracy" if base.validation_split > 0 else "test_accuracy")
        if metric.startswith("val_") and not base.validation_split:
            raise InvalidInput(f"metric {metric} needs base.validation_split above 0 (or rank on test_accuracy or "
                               "test_loss)", field="metric")
        labels = {**base.labels, **body.labels}
        if {"sweep", "trial"} & labels.keys() or len(labels) + 2 > MAX_LABELS:
            raise InvalidInput(f"a trial's labels are the base's and the sweep's, at most {MAX_LABELS - 2} together, "
                               "plus `sweep` and `trial`, which the sweep sets", field="labels")
        manifest = self.jobs.datasets.manifest(base.dataset)  # 404 for an unknown or unseeded dataset
        sweep_id = new_id()
        random_seed = None if body.strategy == "grid" else (
            body.random_seed if body.random_seed is not None else secrets.randbelow(2**31))
        seeds = body.seeds or [base.seed]
        planned = expansion.expand(body.space, strategy=body.strategy, trials=body.trials, seeds=seeds,
                                   random_seed=random_seed)
        shared = base.model_dump(exclude={"version", "labels"})
        checked: set[str] = set()
        requests = []
        for n, (config, seed) in enumerate(planned, start=1):
            fields = {**shared, **config, "seed": seed, "version": f"{sweep_id}-t{n}",
                      "labels": {**labels, "sweep": sweep_id, "trial": str(n)}}
            requests.append(self._checked(fields, config=config, manifest=manifest, checked=checked))
        spec = {"strategy": body.strategy, "space": body.space, "trials": body.trials, "seeds": seeds,
                "metric": metric, "early_stop": body.early_stop.model_dump() if body.early_stop else None,
                "random_seed": random_seed, "base": shared, "labels": labels}
        catalog.add(self.db, sweep={"id": sweep_id, "name": body.name, "spec": spec, "created_at": layout.utcnow()},
                    trials=[{"trial": n, "version": request.version, "config": config, "seed": seed}
                            for n, ((config, seed), request) in enumerate(zip(planned, requests, strict=True), 1)])
        for submitted, request in enumerate(requests):
            try:
                self.jobs.submit(request)
            except ServiceError:  # the catalog went away half-way: the sweep ends cancelled, its queued trials too
                log.warning("sweep %s: trial %d could not be queued; cancelling the sweep", sweep_id, submitted + 1)
                with suppress(ServiceError):
                    self.cancel(sweep_id)
                raise
        log.info("sweep %s: %d trials queued", sweep_id, len(requests))
        return self.get(sweep_id)

    def _checked(self, fields: dict, *, config: dict, manifest: dict, checked: set[str]) -> TrainRequest:
        """One trial's request, validated as `POST /train` validates it (layers and the batch's memory included);
        an error names the swept field (`space.<field>`) or the base's (`base.<field>`)."""
        try:
            request = TrainRequest.model_validate(fields)
            key = json.dumps([request.layers, request.batch_size])
            if key not in checked:  # resolving layers is the costly part, and trials share a few designs
                prepare(request.model_dump(), manifest=manifest, max_bytes=self.jobs.max_bytes)
                checked.add(key)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "base"
            raise self._named(field, error["msg"], config=config) from None
        except InvalidInput as exc:
            raise self._named(exc.extra.get("field") or "base", exc.detail, config=config) from None
        return request

    @staticmethod
    def _named(field: str, message: str, *, config: dict) -> InvalidInput:
        top = field.split(".")[0].split("[")[0]
        named = f"space.{top}" if top in config else f"base.{field}"
        shown = f" (value {json.dumps(config[top])[:200]})" if top in config else ""
        return InvalidInput(f"{named}{shown}: {message}", field=named)

    def get(self, sweep_id: str) -> dict:
        """One sweep's record; 404 when unknown."""
        return self._record(catalog.get(self.db, sweep_id))

    def page(self, *, limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Sweeps newest first, a page at a time."""
        rows, after = catalog.page(self.db, limit=limit, cursor=cursor)
        return [self._record(row) for row in rows], after

    def cancel(self, sweep_id: str) -> dict:
        """Cancel the sweep's unfinished trials (queued first, so none of them starts meanwhile); 409 once every
        trial has ended."""
        record = self.get(sweep_id)
        unfinished = sorted((t for t in record["trials"] if t["status"] not in TERMINAL),
                            key=lambda t: t["status"] != "queued")
        if not unfinished and record["status"] != "running":
            raise Conflict(f"sweep {sweep_id!r} already ended ({record['status']}); nothing to cancel",
                           sweep=sweep_id, sweep_status=record["status"])
        catalog.mark_cancelled(self.db, sweep_id)
        for trial in unfinished:
            with suppress(Conflict):  # it ended meanwhile
                self.jobs.cancel(trial["version"])
        return self.get(sweep_id)

    def _record(self, sweep: dict) -> dict:
        spec, jobs = sweep["spec"], self._jobs(sweep["id"])
        metric = spec["metric"]
        trials = [_trial(trial, jobs.get(trial["version"]), metric=metric)
                  for trial in catalog.trials(self.db, sweep["id"])]
        running = any(trial["status"] not in TERMINAL for trial in trials)
        status = "cancelled" if sweep["cancelled_at"] else "running" if running else "succeeded"
        return {"id": sweep["id"], "name": sweep["name"], "status": status, "strategy": spec["strategy"],
                "space": spec["space"], "seeds": spec["seeds"], "metric": metric, "early_stop": spec["early_stop"],
                "random_seed": spec["random_seed"], "base": spec["base"], "labels": spec["labels"], "trials": trials,
                "best": best(trials, metric), "decisions": catalog.decisions(self.db, sweep["id"]),
                "created_at": sweep["created_at"], "cancelled_at": sweep["cancelled_at"]}

    def _jobs(self, sweep_id: str) -> dict[str, dict]:
        """The sweep's jobs by version, found by their `sweep` label (a page of the job queue at a time)."""
        found, cursor = {}, None
        while True:
            items, cursor = self.jobs.page(labels=[("sweep", sweep_id)], limit=1000, cursor=cursor)
            found.update((job["version"], job) for job in items)
            if cursor is None:
                return found


def _trial(trial: dict, job: dict | None, *, metric: str) -> dict[str, Any]:
    if job is None:  # never queued: its sweep was cancelled while its trials were being queued
        return {**trial, "status": "cancelled", "metric": None, "epochs_run": 0, "stopped_early": None}
    return {**trial, "status": job["status"], "metric": (job["metrics"] or {}).get(metric),
            "epochs_run": len(job["history"]), "stopped_early": job["stopped_early"]}


def best(trials: list[dict], metric: str) -> dict | None:
    """The succeeded trial with the best metric (lowest for a loss); ties go to the lower trial number."""
    ranked = [t for t in trials if t["status"] == "succeeded" and t["metric"] is not None]
    sign = 1 if metric.endswith("_loss") else -1
    return min(ranked, key=lambda t: (sign * t["metric"], t["trial"]), default=None)
