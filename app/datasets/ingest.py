"""Seeding: torchvision's raw files become uint8/int64 safetensors objects and a manifest in S3.

Nothing here unpickles a file torchvision has not checked: MNIST-family files are IDX (parsed, not
unpickled), SVHN's are MATLAB files read by scipy, and CIFAR-10's pickled batches are opened by
torchvision only after they match the official MD5s, also for `from_dir`. IDX files may be given
gzipped, as they are distributed (`train-images-idx3-ubyte.gz`).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torchvision
from safetensors.torch import save
from torchvision.datasets.utils import extract_archive
from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

from app.datasets import definitions
from app.datasets.definitions import DatasetInfo
from app.errors import InvalidInput, ObjectMissing, ServiceError
from app.storage.s3 import PART_SIZE, Store

FORMAT = "scv-dataset/1"


def seed(store: Store, settings, *, names: list[str] | None = None, from_dir: Path | None = None,
         force: bool = False, cka_per_class: int = 10, progress: bool = True) -> list[dict]:
    """Fetch, convert, verify and upload datasets; unchanged stored ones are skipped unless `force`."""
    infos = [definitions.info(name) for name in (names or definitions.NAMES)]  # unknown names fail first
    if cka_per_class < 1:
        raise InvalidInput("--cka-per-class must be at least 1", field="cka_per_class")
    root = Path(from_dir) if from_dir is not None else Path(settings.data_dir) / "raw"
    bucket = settings.minio_dataset_bucket
    store.ensure_buckets(bucket)
    results = []
    for info in infos:
        objects, manifest = build(info, root=root, download=from_dir is None, cka_per_class=cka_per_class,
                                  progress=progress)
        results.append(_upload(store, bucket, info.name, objects, manifest, force=force, progress=progress))
    return results


def build(info: DatasetInfo, *, root: Path, download: bool, cka_per_class: int,
          progress: bool = False) -> tuple[dict[str, bytes], dict]:
    """The dataset's object bytes (train, test, cka) and its manifest, from torchvision's files."""
    splits = {}
    with nullcontext(root) if download else _unpacked(info, root) as source:
        for split in tqdm(definitions.SPLITS, desc=f"fetch+convert {info.name}", unit="split", file=sys.stderr,
                          disable=not progress):
            splits[split] = read_split(info, split, root=source, download=download)
    mean, std = channel_stats(splits["train"][0])
    cka = cka_subset(info, *splits["test"], k=cka_per_class)
    # safetensors bytes are a pure function of the tensors (no metadata), so re-seeding unchanged
    # raw files reproduces identical bytes and checksums: the basis of the idempotency check.
    objects = {"train.safetensors": save(dict(zip(("images", "labels"), splits["train"], strict=True))),
               "test.safetensors": save(dict(zip(("images", "labels"), splits["test"], strict=True))),
               "cka.safetensors": save(dict(zip(("images", "labels", "indices"), cka, strict=True)))}
    manifest = {
        "format": FORMAT, "name": info.name, "classes": list(info.classes), "num_classes": info.num_classes,
        "image_shape": list(info.image_shape), "mean": mean, "std": std,
        "train_size": len(splits["train"][1]), "test_size": len(splits["test"][1]),
        "cka_per_class": cka_per_class,
        "sha256": {obj: hashlib.sha256(data).hexdigest() for obj, data in objects.items()},
        "sizes": {obj: len(data) for obj, data in objects.items()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return objects, manifest


def _idx_files(info: DatasetInfo) -> list[str]:
    """The IDX files torchvision reads for `info` from `<root>/<class>/raw`; none for other formats."""
    if info.torchvision_class == "EMNIST":
        parts, prefix = ("train", "test"), f"emnist-{info.split_kwargs['train']['split']}-"
    elif info.torchvision_class in ("MNIST", "FashionMNIST"):
        parts, prefix = ("train", "t10k"), ""
    else:
        return []
    return [f"{prefix}{part}-{kind}-ubyte" for part in parts for kind in ("images-idx3", "labels-idx1")]


@contextmanager
def _unpacked(info: DatasetInfo, root: Path) -> Iterator[Path]:
    """`root`, or where some IDX files are only gzipped, a temporary root holding them unpacked.

    torchvision reads IDX files only unpacked (its download unpacks them); the originals stay untouched.
    """
    raw = Path(root) / info.torchvision_class / "raw"
    names = _idx_files(info)
    packed = {name for name in names if not (raw / name).is_file() and (raw / f"{name}.gz").is_file()}
    if not packed or not all((raw / name).is_file() or name in packed for name in names):
        yield Path(root)  # nothing to unpack, or files missing: torchvision's error then names the real root
        return
    with tempfile.TemporaryDirectory(prefix=f"scv-{info.name}-") as tmp:
        staged = Path(tmp) / info.torchvision_class / "raw"
        staged.mkdir(parents=True)
        for name in names:
            if name in packed:
                try:
                    extract_archive(raw / f"{name}.gz", staged)  # unpacked as torchvision's download does
                except (OSError, EOFError) as exc:
                    raise InvalidInput(f"{info.name}: {raw / name}.gz is not a complete gzip file ({exc}); "
                                       "download it again", field="from_dir") from None
            else:
                (staged / name).symlink_to((raw / name).resolve())
        yield Path(tmp)


def read_split(info: DatasetInfo, split: str, *, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split through torchvision, as (uint8 N×C×H×W upright images, int64 labels 0..n-1)."""
    cls = getattr(torchvision.datasets, info.torchvision_class)
    try:
        ds = cls(str(root), download=download, **info.split_kwargs[split])
    except (RuntimeError, URLError, OSError) as exc:
        if download:
            raise ServiceError(f"{info.name}: torchvision could not download into {root} ({exc}); check the "
                               f"network, or fetch the files elsewhere and use --from-dir") from None
        raise InvalidInput(f"{info.name}: torchvision found no usable files under {root} ({exc}). Expected "
                           f"there: {info.layout}", field="from_dir") from None
    images = torch.as_tensor(np.asarray(ds.data))
    labels = torch.as_tensor(np.asarray(ds.labels if isinstance(ds, torchvision.datasets.SVHN) else ds.targets))
    c, h, w = info.image_shape
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif tuple(images.shape[1:]) == (h, w, c):  # CIFAR-10 comes channels-last
        images = images.permute(0, 3, 1, 2)
    if info.name == "emnist":
        # EMNIST's IDX files hold each image transposed and letters as 1..26.
        images, labels = images.transpose(2, 3), labels - 1
    images, labels = images.contiguous(), labels.to(torch.int64).contiguous()
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != info.image_shape or len(images) != len(labels):
        raise InvalidInput(f"{info.name} {split}: expected uint8 images of shape {list(info.image_shape)} "
                           f"with one label each, got {images.dtype} {list(images.shape)} and {len(labels)} labels")
    if not len(labels) or int(labels.min()) < 0 or int(labels.max()) >= info.num_classes:
        raise InvalidInput(f"{info.name} {split}: no images, or labels outside 0..{info.num_classes - 1}")
    return images, labels


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std on the [0, 1] scale, exact: from a 256-bin histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        m = float((hist * values).sum() / n)
        var = float((hist * values * values).sum() / n) - m * m
        mean.append(m)
        std.append(max(var, 0.0) ** 0.5)
    return mean, std


def cka_subset(info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor, *,
               k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `k` test images of each class, ordered by class then test index, with their indices."""
    picked = []
    for label, name in enumerate(info.classes):
        found = torch.nonzero(labels == label).flatten()[:k]
        if len(found) < k:
            raise InvalidInput(f"{info.name}: class {name!r} has {len(found)} test images, "
                               f"fewer than --cka-per-class {k}", field="cka_per_class")
        picked.append(found)
    indices = torch.cat(picked).to(torch.int64)
    return images[indices].contiguous(), labels[indices].contiguous(), indices


def _upload(store: Store, bucket: str, name: str, objects: dict[str, bytes], manifest: dict, *,
            force: bool, progress: bool) -> dict:
    stale = [obj for obj, data in objects.items()
             if force or not _stored_equals(store, bucket, f"{name}/{obj}", data)]
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    if force or not _same_manifest(store, bucket, name, manifest):
        stale.append("manifest.json")  # last: a manifest exists only once every object is complete
    uploads = {obj: objects.get(obj, manifest_bytes) for obj in stale}
    with tqdm(total=sum(map(len, uploads.values())), desc=f"upload {name}", unit="B", unit_scale=True,
              file=sys.stderr, disable=not progress or not uploads) as bar:
        for obj, data in uploads.items():
            store.put(bucket=bucket, key=f"{name}/{obj}", data=CallbackIOWrapper(bar.update, io.BytesIO(data)),
                      length=len(data),
                      content_type="application/json" if obj.endswith(".json") else "application/octet-stream")
    return {"name": name, "action": "uploaded" if uploads else "skipped",
            "bytes": sum(map(len, uploads.values())), "objects": list(uploads)}


def _stored_equals(store: Store, bucket: str, key: str, data: bytes) -> bool:
    """Whether the stored object holds exactly `data`, by its ETag when predictable, else by sha256."""
    try:
        info = store.stat(bucket=bucket, key=key)
    except ObjectMissing:
        return False
    if info.size != len(data):
        return False
    # S3 ETags are the MD5 of the bytes (single PUT) or of the parts' MD5s (multipart, our part size):
    # a match proves equality without downloading. Other ETags (SSE, other part sizes) prove
    # nothing either way, so those objects are downloaded and hashed.
    if info.etag in _etags(data):
        return True
    return store.get_bytes(bucket=bucket, key=key) == data


def _etags(data: bytes) -> set[str]:
    view = memoryview(data)
    parts = [hashlib.md5(view[i:i + PART_SIZE]).digest() for i in range(0, len(data), PART_SIZE)]
    return {hashlib.md5(view).hexdigest(), f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"}


def _same_manifest(store: Store, bucket: str, name: str, manifest: dict) -> bool:
    try:
        stored = store.get_json(bucket=bucket, key=f"{name}/manifest.json")
    except (ObjectMissing, ValueError):
        return False
    return {**stored, "created_at": None} == {**manifest, "created_at": None}
