"""Reading seeded datasets: manifests, and verified split tensors through the local cache and an in-process LRU."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from app.datasets import definitions
from app.datasets.images import grid_png
from app.errors import DatasetNotSeeded, IntegrityError, InvalidInput, ObjectMissing
from app.lru import LRU
from app.storage.cache import SHA256, CacheMismatch, LocalCache
from app.storage.s3 import Store

MEMORY_ENTRIES = 4  # a job needs train + test; the API needs the CKA sets of a few datasets
EXPECTED = {"train.safetensors": ("images", "labels"), "test.safetensors": ("images", "labels"),
            "cka.safetensors": ("images", "labels", "indices")}


class DatasetService:
    """Manifests and tensors of the seeded datasets, each object checked against its manifest sha256.

    Objects are downloaded once into the local cache (`SCV_DATA_DIR/cache/<sha256>.safetensors`, kept
    only after the size and sha256 matched, shared with model files under SCV_CACHE_MAX_BYTES), then
    memory-mapped from there; a small in-process LRU keyed by sha256 skips even that. Import-light: no FastAPI.
    """

    def __init__(self, *, store: Store, settings, memory_entries: int = MEMORY_ENTRIES):
        self.store, self.bucket = store, settings.minio_dataset_bucket
        self.cache = LocalCache.from_settings(settings)
        self._memory = LRU(memory_entries)  # sha256 -> tensors

    def manifest(self, name: str) -> dict:
        """The stored manifest of `name`; DatasetNotFound / DatasetNotSeeded when there is none."""
        definitions.info(name)
        try:
            return self.store.get_json(bucket=self.bucket, key=f"{name}/manifest.json")
        except ObjectMissing:
            raise DatasetNotSeeded(name) from None
        except ValueError:
            raise self._damaged(name, "manifest.json", "is not valid JSON") from None

    def list(self) -> list[dict]:
        """All five datasets, each with `seeded` and, when seeded, its manifest fields."""
        out = []
        for name in definitions.NAMES:
            try:
                out.append({"name": name, "seeded": True, **self.manifest(name)})
            except DatasetNotSeeded:
                out.append({"name": name, "seeded": False})
        return out

    def load_split(self, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 N×C×H×W, labels int64 N) of the `train` or `test` split."""
        if split not in definitions.SPLITS:
            raise InvalidInput(f"unknown split {split!r}; use one of {', '.join(definitions.SPLITS)}", field="split")
        tensors = self._tensors(name, f"{split}.safetensors")
        return tensors["images"], tensors["labels"]

    def cka_set(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, indices into the test split) of the CKA sample set, by class then index."""
        tensors = self._tensors(name, "cka.safetensors")
        return tensors["images"], tensors["labels"], tensors["indices"]

    def cka_grid_png(self, name: str) -> bytes:
        """The CKA sample set drawn as a PNG, one row per class (the set holds as many images of every class)."""
        images, labels, _ = self.cka_set(name)
        return grid_png(images, ncols=int((labels == 0).sum()))

    # -- internals ----------------------------------------------------------------------------

    def _tensors(self, name: str, obj: str) -> dict[str, torch.Tensor]:
        manifest = self.manifest(name)
        try:
            sha, size = manifest["sha256"][obj], int(manifest["sizes"][obj])
            if not SHA256.fullmatch(sha):  # it names a cache file: a hex digest and nothing else
                raise ValueError(sha)
        except (KeyError, TypeError, ValueError):
            raise self._damaged(name, "manifest.json", f"has no valid checksum for {obj}") from None
        if (tensors := self._memory.get(sha)) is not None:
            return tensors
        try:  # mmap'd: a cached load costs page-cache reads, not a copy; the file was verified when it entered
            with self.cache.entry(sha, size, fetch=lambda: self.store.iter_bytes(bucket=self.bucket,
                                                                                key=f"{name}/{obj}")) as path:
                tensors = load_file(path)
        except ObjectMissing:
            raise self._damaged(name, obj, "is missing") from None
        except CacheMismatch as exc:
            raise self._damaged(name, obj, f"does not match its manifest ({exc})") from None
        shape = tuple(manifest.get("image_shape", ()))
        if (sorted(tensors) != sorted(EXPECTED[obj]) or tensors["images"].dtype != torch.uint8
                or tuple(tensors["images"].shape[1:]) != shape or tensors["labels"].dtype != torch.int64
                or len(tensors["labels"]) != len(tensors["images"])):
            raise self._damaged(name, obj, "does not hold the tensors its manifest describes")
        self._memory.put(sha, tensors)
        return tensors

    def _damaged(self, name: str, obj: str, what: str) -> IntegrityError:
        return IntegrityError(
            f"dataset {name!r}: stored object {self.bucket}/{name}/{obj} {what}; it is refused. "
            f"Repair it with `scv datasets seed {name} --force`", dataset=name, object=f"{name}/{obj}")
