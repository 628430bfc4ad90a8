"""`Client`: every route of the API as a method, typed with the API's own pydantic models."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from pydantic import BaseModel, TypeAdapter

from app.api.schemas import (
    AliasRecord,
    DatasetEntry,
    Dynamics,
    JobPage,
    LayerCKA,
    Manifest,
    ModelItem,
    ModelMetadata,
    ModelPage,
    Predictions,
    Problem,
    SnapshotList,
)
from app.client.errors import APIError, ChecksumMismatch
from app.client.events import server_sent_events
from app.jobs.record import JobRecord
from app.jobs.request import TrainRequest
from app.sweeps.record import SweepPage, SweepRecord, SweepSimilarity
from app.sweeps.request import SweepRequest

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
OnProgress = Callable[[int, int], object]  # (bytes so far, total bytes)


class Downloaded(NamedTuple):
    path: Path
    sha256: str
    size_bytes: int


class Client:
    """`Client(url, token)`: one httpx connection pool to the service at `url`; use it as a context manager."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- training ----------------------------------------------------------------------------------------------------

    def train(self, request: TrainRequest | None = None, /, **fields: Any) -> JobRecord:
        """Queue a training job from a TrainRequest or its fields (`client.train(dataset="mnist", epochs=2)`)."""
        if request is not None and fields:
            raise TypeError("pass a TrainRequest or its fields, not both")
        request = request or TrainRequest(**fields)
        return self._json("POST", "/train", JobRecord, json=request.model_dump(mode="json", exclude_unset=True))

    def job(self, version: str) -> JobRecord:
        return self._json("GET", f"/train/{version}", JobRecord)

    def job_page(self, *, status: str | None = None, dataset: str | None = None, labels: dict[str, str] | None = None,
                 limit: int = 50, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass its `next` as `cursor` for the following one."""
        params = _query(status=status, dataset=dataset, labels=labels, limit=limit, cursor=cursor)
        return self._json("GET", "/train", JobPage, params=params)

    def jobs(self, **filters: Any) -> Iterator[JobRecord]:
        """Every job matching `filters` (those of `job_page`), newest first, fetched a page at a time."""
        return _paged(self.job_page, filters)

    def cancel(self, version: str) -> JobRecord:
        return self._json("DELETE", f"/train/{version}", JobRecord)

    def events(self, version: str) -> Iterator[JobRecord]:
        """The job's record on every change (Server-Sent Events), until it ends; a dropped stream is resumed from
        the last record seen (`Last-Event-ID`)."""
        last_id: str | None = None
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            with self._http.stream("GET", f"/train/{version}/events", headers=headers, timeout=None) as response:
                _raise_for(response)
                record = None
                try:
                    for event, event_id, data in server_sent_events(response.iter_lines()):
                        if event == "error":  # storage went away mid-stream; the job itself goes on
                            raise APIError(Problem(type="about:blank", title="Event stream lost", **data))
                        record, last_id = JobRecord.model_validate(data), event_id or last_id
                        yield record
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    continue  # the server closed mid-stream: reconnect
            if record is not None and record.status in TERMINAL:
                return
            if record is None and self.job(version).status in TERMINAL:  # it ended between two connections
                return

    def wait(self, version: str, *, on_update: Callable[[JobRecord], object] | None = None) -> JobRecord:
        """Follow the job until it ends (`on_update` sees every record) and return its final record."""
        record = None
        for record in self.events(version):
            if on_update:
                on_update(record)
        return record if record is not None else self.job(version)

    # -- models ------------------------------------------------------------------------------------------------------

    def model_page(self, *, dataset: str | None = None, labels: dict[str, str] | None = None,
                   sort: str = "created_at", limit: int = 50, cursor: str | None = None) -> ModelPage:
        """One page of models, highest `sort` first; pass its `next` as `cursor` for the following one."""
        params = _query(dataset=dataset, labels=labels, sort=sort, limit=limit, cursor=cursor)
        return self._json("GET", "/models", ModelPage, params=params)

    def models(self, **filters: Any) -> Iterator[ModelItem]:
        """Every model matching `filters` (those of `model_page`), fetched a page at a time."""
        return _paged(self.model_page, filters)

    def metadata(self, version: str) -> ModelMetadata:
        return self._json("GET", f"/models/{version}/metadata", ModelMetadata)

    def snapshots(self, version: str) -> SnapshotList:
        return self._json("GET", f"/models/{version}/snapshots", SnapshotList)

    def download(self, version: str, path: str | Path | None = None, *, epoch: int | None = None,
                 on_progress: OnProgress | None = None) -> Downloaded:
        """Stream the model file (or its snapshot of `epoch`) to `path` (default `{version}.safetensors` here),
        checked against its sha256 (the ETag) before it takes the name."""
        route = f"/models/{version}" + (f"/snapshots/{epoch}" if epoch is not None else "")
        name = f"{version}.safetensors" if epoch is None else f"{version}.epoch-{epoch}.safetensors"
        out = Path(path) if path is not None else Path(name)
        partial, digest, done = out.with_name(out.name + ".part"), hashlib.sha256(), 0
        with self._http.stream("GET", route) as response:
            _raise_for(response)
            expected, total = response.headers["etag"].strip('"'), int(response.headers["content-length"])
            with open(partial, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
        if digest.hexdigest() != expected:
            partial.unlink()
            raise ChecksumMismatch(f"sha256 mismatch for {version}: got {digest.hexdigest()}, expected {expected}")
        return Downloaded(partial.replace(out), expected, done)

    def delete(self, version: str) -> None:
        """Delete the model and everything stored under its version."""
        self._request("DELETE", f"/models/{version}")

    def predict(self, version: str, images: Sequence[Any]) -> Predictions:
        """Classify images: PNG/JPEG bytes, or uint8 arrays (C×H×W or H×W; nested lists, numpy or torch)."""
        if images and all(isinstance(image, bytes) for image in images):
            files = [("files", (f"{i}.png", image)) for i, image in enumerate(images)]
            return self._json("POST", f"/models/{version}/predict", Predictions, files=files)
        arrays = [image.tolist() if hasattr(image, "tolist") else image for image in images]
        return self._json("POST", f"/models/{version}/predict", Predictions, json={"images": arrays})

    # -- analysis ----------------------------------------------------------------------------------------------------

    def cka(self, version: str, *, against: str | None = None, estimator: str | None = None,
            epoch: int | None = None, against_epoch: int | None = None, data: str | None = None,
            batch_size: int | None = None) -> LayerCKA:
        """CKA between every pair of the model's layers (or with `against`'s), as GET /models/{version}/cka."""
        params = _query(against=against, estimator=estimator, epoch=epoch, against_epoch=against_epoch, data=data,
                        batch_size=batch_size)
        return self._analysis(f"/models/{version}/cka", LayerCKA, params)

    def dynamics(self, version: str, *, data: str | None = None, estimator: str | None = None) -> Dynamics:
        """CKA of each layer at each snapshot against the final model's, as GET /models/{version}/dynamics."""
        return self._analysis(f"/models/{version}/dynamics", Dynamics, _query(data=data, estimator=estimator))

    # -- sweeps ------------------------------------------------------------------------------------------------------

    def create_sweep(self, request: SweepRequest | dict | None = None, /, **fields: Any) -> SweepRecord:
        """Submit a sweep from a SweepRequest, its JSON body as a dict, or its fields; its trials are queued."""
        if request is not None and fields:
            raise TypeError("pass a SweepRequest (or its body) or its fields, not both")
        request = request if isinstance(request, SweepRequest) else SweepRequest.model_validate(request or fields)
        return self._json("POST", "/sweeps", SweepRecord, json=request.model_dump(mode="json", exclude_unset=True))

    def sweep(self, sweep_id: str) -> SweepRecord:
        return self._json("GET", f"/sweeps/{sweep_id}", SweepRecord)

    def sweep_page(self, *, limit: int = 50, cursor: str | None = None) -> SweepPage:
        """One page of sweeps, newest first; pass its `next` as `cursor` for the following one."""
        return self._json("GET", "/sweeps", SweepPage, params=_query(limit=limit, cursor=cursor))

    def sweeps(self, **filters: Any) -> Iterator[SweepRecord]:
        """Every sweep, newest first, fetched a page at a time (`limit` per page)."""
        return _paged(self.sweep_page, filters)

    def cancel_sweep(self, sweep_id: str) -> SweepRecord:
        """Cancel the sweep's unfinished trials; 409 (an APIError) when every trial had ended already."""
        return self._json("DELETE", f"/sweeps/{sweep_id}", SweepRecord)

    def sweep_similarity(self, sweep_id: str) -> SweepSimilarity:
        """Per configuration with two or more seeds, the same-layer CKA between its replicates (mean, min, max)."""
        return self._analysis(f"/sweeps/{sweep_id}/similarity", SweepSimilarity, {})

    def wait_sweep(self, sweep_id: str, *, on_update: Callable[[SweepRecord], object] | None = None,
                   poll_s: float = 2.0, timeout: float | None = None) -> SweepRecord:
        """Poll the sweep every `poll_s` seconds (sweeps have no event stream) until it is no longer running and every
        trial has ended (a cancelled sweep's trials end a moment after it), and return that record; `on_update` sees
        every record polled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.sweep(sweep_id)
            if on_update:
                on_update(record)
            if record.status != "running" and all(trial.status in TERMINAL for trial in record.trials):
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still running after {timeout:.0f} s")
            time.sleep(poll_s)

    # -- aliases and datasets ----------------------------------------------------------------------------------------

    def aliases(self) -> list[AliasRecord]:
        return self._json("GET", "/aliases", TypeAdapter(list[AliasRecord]))

    def alias(self, alias: str) -> AliasRecord:
        return self._json("GET", f"/aliases/{alias}", AliasRecord)

    def set_alias(self, alias: str, *, version: str) -> AliasRecord:
        """Create the alias, or move it to `version`."""
        return self._json("PUT", f"/aliases/{alias}", AliasRecord, json={"version": version})

    def delete_alias(self, alias: str) -> None:
        self._request("DELETE", f"/aliases/{alias}")

    def datasets(self) -> list[DatasetEntry]:
        return self._json("GET", "/datasets", TypeAdapter(list[DatasetEntry]))

    def dataset(self, name: str) -> Manifest:
        return self._json("GET", f"/datasets/{name}", Manifest)

    # -- the one place requests are made and errors translated -------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response

    def _json(self, method: str, path: str, model: type[BaseModel] | TypeAdapter, **kwargs: Any) -> Any:
        content = self._request(method, path, **kwargs).content
        return model.validate_json(content) if isinstance(model, TypeAdapter) else model.model_validate_json(content)

    def _analysis(self, path: str, model: type[BaseModel], params: dict, *, timeout: float = 600.0) -> Any:
        """An analysis, waiting while the service answers 202 (a worker computes it) for `Retry-After` seconds."""
        deadline = time.monotonic() + timeout
        while (response := self._request("GET", path, params=params)).status_code == 202:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} still being computed after {timeout:.0f} s")
            time.sleep(min(float(response.headers.get("retry-after", 1)), max(deadline - time.monotonic(), 0)))
        return model.model_validate_json(response.content)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        response.read()  # a streamed error body must be read before it can be shown
        raise APIError.of(response)


def _query(*, labels: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; `labels` as repeated `label=key:value`."""
    query = {name: value for name, value in params.items() if value is not None}
    if labels:
        query["label"] = [f"{key}:{value}" for key, value in labels.items()]
    return query


def _paged(page: Callable[..., Any], filters: dict[str, Any]) -> Iterator[Any]:
    cursor = filters.pop("cursor", None)
    while True:
        result = page(**filters, cursor=cursor)
        yield from result.items
        if not (cursor := result.next):
            return
