"""Analyses of stored models on their dataset's images (CKA, activations, top images), with a result cache."""

from collections.abc import Callable
from typing import Any

import torch

import models
from app.analysis import maths
from app.datasets.service import DatasetService
from app.errors import InvalidInput
from app.lru import LRU
from app.registry.service import ModelRegistry

CACHE_ENTRIES = 64  # small each: a matrix, one sample's maps, or a top-100 ranking with its images
MAX_K = 100
CKA_SET, TEST_SPLIT = "cka.safetensors", "test.safetensors"


class Analyses:
    """Runs one analysis of a stored model on its dataset's images and keeps recent results (LRU).

    Stored models and dataset objects never change in place, so a result is keyed by the version, the
    model file's sha256 and the sha256 of the dataset object it ran on, plus the analysis parameters.
    Two identical requests arriving together may both compute; the result is the same.
    """

    def __init__(self, *, registry: ModelRegistry, datasets: DatasetService, entries: int = CACHE_ENTRIES):
        self.registry, self.datasets, self._results = registry, datasets, LRU(entries)

    def cka(self, version: str, *, estimator: str, against: str | None) -> dict:
        """{"layers", "matrix", "estimator"}, plus "other_layers" (the columns) with `against`."""
        model = self.registry.get(version)  # a checked version (the edge resolved it); 404 unknown, 409 training
        other = self.registry.get(against) if against is not None else None
        if other is not None and other["dataset"] != model["dataset"]:
            raise InvalidInput(f"model {against!r} was trained on {other['dataset']} but {version!r} on "
                               f"{model['dataset']}; CKA compares two models on the same images, so pick a "
                               f"model of {model['dataset']}", field="against")

        def compute(net, meta: dict) -> dict:
            images = self.datasets.cka_set(model["dataset"])[0]
            if other is None:
                return maths.cka_matrix(net, _normalised(images, meta), estimator=estimator)
            other_net, other_meta = self.registry.load(against)
            if other_meta["input_shape"] != meta["input_shape"]:
                raise InvalidInput(f"model {against!r} takes inputs {other_meta['input_shape']} but {version!r} "
                                   f"takes {meta['input_shape']}; both must take the same images", field="against")
            return maths.cka_matrix(net, _normalised(images, meta), estimator=estimator, other=other_net,
                                       other_x=_normalised(images, other_meta))

        against_key = (other["version"], other["sha256"]) if other else ()
        return self._cached(model, CKA_SET, ("cka", *against_key, estimator), compute)

    def activations(self, version: str, *, layer: int, sample: int) -> dict:
        """One CKA sample's output at one layer ("maps": C×H×W or F), with its label and test-split index."""
        model = self.registry.get(version)

        def compute(net, meta: dict) -> dict:
            images, labels, indices = self.datasets.cka_set(model["dataset"])
            if not 0 <= sample < len(images):
                raise InvalidInput(f"sample {sample} is out of range; the CKA set of {model['dataset']} has "
                                   f"{len(images)} samples (0..{len(images) - 1})", field="sample")
            maps = maths.activations(net, _normalised(images[sample : sample + 1], meta), layer=layer)
            return {"layer": layer, "name": maths.layer_names(net)[layer], "sample": sample,
                    "label": int(labels[sample]), "index": int(indices[sample]), "maps": maps}

        return self._cached(model, CKA_SET, ("activations", layer, sample), compute)

    def top_images(self, version: str, *, layer: int, channel: int, k: int) -> dict:
        """The k test-split images with the highest mean activation of `channel` ("images": their pixels)."""
        model = self.registry.get(version)

        def compute(net, meta: dict) -> dict:
            images, labels = self.datasets.load_split(model["dataset"], "test")
            norm = meta["normalization"]
            indices, values = maths.top_images(net, images, mean=norm["mean"], std=norm["std"], layer=layer,
                                                  channel=channel, k=MAX_K)
            return {"layer": layer, "name": maths.layer_names(net)[layer], "channel": channel,
                    "indices": indices, "labels": labels[indices].tolist(), "activations": values,
                    "images": images[indices]}

        # The ranking is stable, so every k is a prefix of the top MAX_K: one pass serves them all.
        top = self._cached(model, TEST_SPLIT, ("top-images", layer, channel), compute)
        return {**top, **{name: top[name][:k] for name in ("indices", "labels", "activations", "images")}}

    def _cached(self, model: dict, obj: str, params: tuple, compute: Callable[[Any, dict], Any]) -> Any:
        """`compute(net, meta)` of `model`, or its result kept under the model file's and the dataset object `obj`'s
        sha256 and `params`."""
        data = (self.datasets.manifest(model["dataset"]).get("sha256") or {}).get(obj)
        key = (*params, model["version"], model["sha256"], data)
        if (value := self._results.get(key)) is not None:
            return value
        try:
            value = compute(*self.registry.load(model["version"]))
        except maths.AnalysisInputError as exc:
            raise InvalidInput(str(exc), field=exc.field) from None
        self._results.put(key, value)
        return value


def _normalised(images: torch.Tensor, meta: dict) -> torch.Tensor:
    norm = meta["normalization"]
    return models.normalize(images, norm["mean"], norm["std"])
