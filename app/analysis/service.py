"""Analyses of stored models and their snapshots (CKA, dynamics, activations, top images), stored as results.

A result is stored under `<version>/analyses/<key>.json`, the key the sha256 of everything it depends on: the
analysis and its parameters, the sha256 of every model file it runs (the model's, a snapshot's, `against`'s) and of
the dataset object it runs on. Stored models, snapshots and dataset objects never change in place, so a stored
result is right for as long as it exists, on every replica; deleting the model deletes it.

Analyses of the CKA sample set (CKA, top images' ranking aside) run in the request. Those of the whole test split
and the dynamics run as analysis jobs of the job queue (same leases, attempts and fencing as training), whose ID is
`analysis~<key>`: the request that finds no result queues one (once, whoever asks) and is answered 202 meanwhile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import models
from app.analysis import maths
from app.analysis.minibatch import BATCH_SIZE, minibatch_cka
from app.datasets.service import DatasetService
from app.errors import Accepted, InvalidInput, ObjectMissing
from app.registry import publishing
from app.registry.service import ModelRegistry
from app.storage import layout
from app.storage.s3 import Store

MAX_K = 100
CKA_SET, TEST_SPLIT = "cka.safetensors", "test.safetensors"
RETRY_AFTER_S = 2


def pending(job: dict) -> Accepted:
    """The 202 of a result an analysis job is computing: its status and progress."""
    fraction = (job.get("progress") or {}).get("fraction", 0.0)
    return Accepted({"status": job["status"], "progress": fraction, "attempts": job["attempts"],
                     "detail": f"the analysis is {job['status']}; ask again at this URL in {RETRY_AFTER_S} s"},
                    retry_after_s=RETRY_AFTER_S)


class Analyses:
    """Serves each analysis from storage, computing it first (here, or by queueing an analysis job) when absent."""

    def __init__(self, *, registry: ModelRegistry, datasets: DatasetService, store: Store, bucket: str,
                 max_bytes: int, queue_job=None):
        self.registry, self.datasets, self.store, self.bucket = registry, datasets, store, bucket
        # `queue_job(job_id, dataset=, request=)` queues an analysis job unless one has that ID; returns its record
        self.max_bytes, self.queue_job = max_bytes, queue_job

    # -- the analyses ------------------------------------------------------------------------------------------

    def cka(self, version: str, *, estimator: str = "linear", against: str | None = None, epoch: int | None = None,
            against_epoch: int | None = None, data: str = "cka", batch_size: int = BATCH_SIZE) -> dict:
        """{"layers", "matrix", "estimator"} (+ "other_layers" with `against`; + "n", "batches", "ci" on `test`)."""
        if data == "test" and estimator == "linear":
            raise InvalidInput("data=test uses the unbiased minibatch estimator only (a biased CKA averaged over "
                               "batches depends on the batch size): use estimator=debiased, or data=cka",
                               field="estimator")
        if against is None and against_epoch is not None:
            raise InvalidInput("against_epoch picks a snapshot of `against`; give `against` too", field="against_epoch")
        spec = {"analysis": "cka", "version": version, "epoch": epoch, "against": against,
                "against_epoch": against_epoch, "data": data, "estimator": estimator,
                "batch_size": batch_size if data == "test" else None}
        return self._result(spec, inline=data == "cka")

    def dynamics(self, version: str, *, data: str = "cka", estimator: str | None = None,
                 batch_size: int = BATCH_SIZE) -> dict:
        """Per layer and kept epoch, CKA to the same layer of the final model (SPEC: dynamics)."""
        estimator = estimator or ("debiased" if data == "test" else "linear")
        if data == "test" and estimator == "linear":
            raise InvalidInput("dynamics on data=test uses the unbiased minibatch estimator only: use "
                               "estimator=debiased, or data=cka", field="estimator")
        return self._result(dynamics_spec(version, data=data, estimator=estimator, batch_size=batch_size),
                            inline=False)

    def activations(self, version: str, *, layer: int, sample: int, epoch: int | None = None) -> dict:
        """One CKA sample's output at one layer ("maps": C×H×W or F), with its label and test-split index; one
        sample through part of the network: computed in the request, not stored."""
        dataset = self.registry.get(version)["dataset"]
        net, meta = self.registry.load(version, epoch)
        images, labels, indices = self.datasets.cka_set(dataset)
        if not 0 <= sample < len(images):
            raise InvalidInput(f"sample {sample} is out of range; the CKA set of {dataset} has {len(images)} "
                               f"samples (0..{len(images) - 1})", field="sample")
        with _inputs_checked():
            maps = self.registry.computed(maths.activations, net, _normalised(images[sample : sample + 1], meta),
                                          layer=layer, max_bytes=self.max_bytes)
        return {"layer": layer, "name": maths.layer_names(net)[layer], "sample": sample,
                "label": int(labels[sample]), "index": int(indices[sample]), "maps": maps}

    def top_images(self, version: str, *, layer: int, channel: int, k: int, epoch: int | None = None) -> dict:
        """The k test-split images with the highest mean activation of `channel` ("images": their pixels). The
        stored result is the top MAX_K ranking (stable, so every k is a prefix of it)."""
        spec = {"analysis": "top-images", "version": version, "epoch": epoch, "layer": layer, "channel": channel}
        top = self._result(spec, inline=True)
        images = self.datasets.load_split(self.registry.get(version)["dataset"], "test")[0]
        top = {**top, **{name: top[name][:k] for name in ("indices", "labels", "activations")}}
        return {**top, "images": images[top["indices"]]}

    # -- stored results ----------------------------------------------------------------------------------------

    def _result(self, spec: dict, *, inline: bool) -> dict:
        """The stored result of `spec`; computed now and stored when `inline`, else by an analysis job."""
        version, digest = spec["version"], self.key(spec)
        try:
            return self.store.get_json(bucket=self.bucket, key=layout.analysis_key(version, digest))
        except ObjectMissing:
            pass
        if inline or self.queue_job is None:
            return self.store_result(spec, digest, self.compute(spec))
        job = self.queue_job(layout.ANALYSIS_JOB + digest, dataset=self.registry.get(version)["dataset"],
                             request={"analysis": spec})
        if job["status"] == "failed":
            raise InvalidInput(f"the analysis failed: {job['error']}", job_status="failed")
        if job["status"] == "succeeded":  # stored meanwhile
            return self.store.get_json(bucket=self.bucket, key=layout.analysis_key(version, digest))
        raise pending(job)

    def store_result(self, spec: dict, digest: str, result: dict) -> dict:
        publishing.store_analysis(self.store, bucket=self.bucket, version=spec["version"], digest=digest,
                                  result=result)
        return result

    def key(self, spec: dict) -> str:
        """The key of `spec`'s result (`result_key`); 404 for a model, snapshot or dataset that does not exist, 422
        for an `against` of another dataset."""
        model = self.registry.get(spec["version"])
        files = [self._file(spec["version"], spec.get("epoch"), model)]
        if spec.get("against") is not None:
            other = self.registry.get(spec["against"])
            if other["dataset"] != model["dataset"]:
                raise InvalidInput(f"model {spec['against']!r} was trained on {other['dataset']} but "
                                   f"{spec['version']!r} on {model['dataset']}; CKA compares two models on the same "
                                   f"images, so pick a model of {model['dataset']}", field="against")
            files.append(self._file(spec["against"], spec.get("against_epoch"), other))
        if spec["analysis"] == "dynamics":
            files += [entry["sha256"] for entry in self._kept(spec["version"], model)]
        return result_key(spec, files, manifest=self.datasets.manifest(model["dataset"]))

    def _file(self, version: str, epoch: int | None, model: dict) -> str:
        return model["sha256"] if epoch is None else self.registry.snapshot(version, epoch)["sha256"]

    def _kept(self, version: str, model: dict) -> list[dict]:
        if entries := self.registry.snapshots(version):
            return entries
        every = (model["meta"].get("request") or {}).get("snapshot_every")
        raise ObjectMissing(f"model {version!r} kept no snapshots (snapshot_every={every}); its dynamics need them: "
                            "train with snapshot_every of 1 or more", version=version, snapshot_every=every)

    # -- computing ---------------------------------------------------------------------------------------------

    def compute(self, spec: dict) -> dict:
        """The result of `spec`, computed within SCV_ANALYSIS_MAX_BYTES on the registry's compute thread (an analysis
        job runs this too)."""
        return self.registry.computed(self._compute, spec)

    def _compute(self, spec: dict) -> dict:
        model = self.registry.get(spec["version"])
        with _inputs_checked():
            if spec["analysis"] == "top-images":
                return self._top_images(spec, model)
            if spec["analysis"] == "dynamics":
                nets = ((entry, self.registry.load(spec["version"], entry["epoch"])[0])
                        for entry in self._kept(spec["version"], model))
                return dynamics(nets, *self.registry.load(spec["version"]), self._images(spec, model),
                                data=spec["data"], estimator=spec["estimator"], batch_size=spec["batch_size"],
                                max_bytes=self.max_bytes)
            net, meta = self.registry.load(spec["version"], spec["epoch"])
            other = None if spec["against"] is None else self.registry.load(spec["against"], spec["against_epoch"])
            return cka_of(net, meta, self._images(spec, model), other=other, data=spec["data"],
                          estimator=spec["estimator"], batch_size=spec["batch_size"], max_bytes=self.max_bytes)

    def _images(self, spec: dict, model: dict) -> torch.Tensor:
        if spec["data"] == "test":
            return self.datasets.load_split(model["dataset"], "test")[0]
        return self.datasets.cka_set(model["dataset"])[0]

    def _top_images(self, spec: dict, model: dict) -> dict:
        net, meta = self.registry.load(spec["version"], spec["epoch"])
        images, labels = self.datasets.load_split(model["dataset"], "test")
        norm, layer = meta["normalization"], spec["layer"]
        indices, values = maths.top_images(net, images, mean=norm["mean"], std=norm["std"], layer=layer,
                                           channel=spec["channel"], k=MAX_K, max_bytes=self.max_bytes)
        return {"layer": layer, "name": maths.layer_names(net)[layer], "channel": spec["channel"],
                "indices": indices, "labels": labels[indices].tolist(), "activations": values}


def result_key(spec: dict, files: list[str], *, manifest: dict) -> str:
    """The key of `spec`'s result: a sha256 of it, of the model files it runs (`files`: their sha256) and of the
    dataset object it runs on (from the dataset's `manifest`)."""
    obj = TEST_SPLIT if spec.get("data") == "test" or spec["analysis"] == "top-images" else CKA_SET
    data = (manifest.get("sha256") or {}).get(obj)
    return hashlib.sha256(json.dumps([spec, files, data], sort_keys=True).encode()).hexdigest()


def dynamics_spec(version: str, *, data: str, estimator: str, batch_size: int) -> dict:
    return {"analysis": "dynamics", "version": version, "data": data, "estimator": estimator,
            "batch_size": batch_size if data == "test" else None}


def cka_of(net, meta: dict, images: torch.Tensor, *, other: tuple | None, data: str, estimator: str,
           batch_size: int | None, max_bytes: int) -> dict:
    """CKA between the layers of `net` (or against `other`'s, a (net, meta) pair) on uint8 `images`."""
    if data == "test":
        return minibatch_cka(images, net, normalization=meta["normalization"],
                             against=None if other is None else other[0],
                             against_normalization=None if other is None else other[1]["normalization"],
                             estimator=estimator, batch_size=batch_size, max_bytes=max_bytes)
    if other is not None and other[1]["input_shape"] != meta["input_shape"]:
        raise InvalidInput(f"the models take inputs {meta['input_shape']} and {other[1]['input_shape']}; both must "
                           "take the same images", field="against")
    return maths.cka_matrix(net, _normalised(images, meta), estimator=estimator, max_bytes=max_bytes,
                            other=None if other is None else other[0],
                            other_x=None if other is None else _normalised(images, other[1]))


def dynamics(snapshots: Iterable[tuple[dict, Any]], final, meta: dict, images: torch.Tensor, *, data: str,
             estimator: str, batch_size: int | None, max_bytes: int) -> dict:
    """How each layer reached its final form: CKA of layer ℓ of every snapshot (its `entry`, its net; loaded one at a
    time) to layer ℓ of `final` (on the test split: the minibatch estimator, with the interval's bounds as `ci`)."""
    entries, columns, lows, highs = [], [], [], []
    for entry, net in snapshots:
        result = cka_of(net, meta, images, other=(final, meta), data=data, estimator=estimator,
                        batch_size=batch_size, max_bytes=max_bytes)
        entries.append(entry)
        columns.append(_diagonal(result["matrix"]))
        if "ci" in result:
            lows.append(_diagonal(result["ci"]["low"]))
            highs.append(_diagonal(result["ci"]["high"]))
    out = {"layers": maths.layer_names(final), "epochs": [entry["epoch"] for entry in entries],
           "to_final": _by_layer(columns), "metrics": [entry["metrics"] for entry in entries],
           "estimator": estimator, "data": data}
    if data == "test":
        out.update(n=result["n"], batches=result["batches"],
                   ci={"level": result["ci"]["level"], "low": _by_layer(lows), "high": _by_layer(highs)})
    return out


def _diagonal(matrix: list[list[float]]) -> list[float]:
    return [row[i] for i, row in enumerate(matrix)]


def _by_layer(columns: list[list[float]]) -> list[list[float]]:
    """Per-epoch columns of per-layer values → per-layer rows of per-epoch values."""
    return [list(row) for row in zip(*columns, strict=True)]


@contextmanager
def _inputs_checked() -> Iterator[None]:
    """Turns the analysis maths' input errors into 422 problems naming the parameter."""
    try:
        yield
    except maths.AnalysisInputError as exc:
        raise InvalidInput(str(exc), field=exc.field) from None


def _normalised(images: torch.Tensor, meta: dict) -> torch.Tensor:
    norm = meta["normalization"]
    return models.normalize(images, norm["mean"], norm["std"])
