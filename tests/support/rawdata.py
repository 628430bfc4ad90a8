"""Tiny raw files in torchvision's own formats (IDX, CIFAR-10 batches, SVHN .mat), with a learnable pattern.

Every image shows a bright square in the grid cell of its class (class `c` of `n` sits in cell
`divmod(c, ceil(sqrt(n)))`) over dim noise, so a small CNN learns any of the five in an epoch or two.
`make_split` gives what seeding must produce (upright, labels 0..n-1); `write_raw` stores it the way
the original files do (EMNIST transposed with letters 1..26, SVHN's digit 0 as 10, CIFAR-10 pickled).
"""

from __future__ import annotations

import hashlib
import math
import pickle
import zlib
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import scipy.io
import torchvision

from app.datasets import definitions
from app.datasets.ingest import seed


def make_split(name: str, split: str, *, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N×C×H×W images, int64 labels) of one split, in a shuffled but reproducible order."""
    info = definitions.info(name)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{split}/{per_class}".encode()))
    labels = rng.permutation(np.repeat(np.arange(info.num_classes), per_class)).astype(np.int64)
    c, h, w = info.image_shape
    grid = math.ceil(math.sqrt(info.num_classes))
    cell = h // grid
    squares = np.zeros((info.num_classes, 1, h, w), dtype=bool)
    for label in range(info.num_classes):
        row, col = divmod(label, grid)
        squares[label, :, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = True
    shape = (len(labels), c, h, w)
    images = np.where(squares[labels], rng.integers(200, 256, size=shape, dtype=np.uint8),
                      rng.integers(0, 60, size=shape, dtype=np.uint8))
    return images, labels


def write_raw(root: Path, *, per_class_train: int, per_class_test: int, names=None) -> None:
    """Write raw files for `names` (default all five) under `root`, laid out as torchvision's root."""
    root = Path(root)
    for name in names or definitions.NAMES:
        splits = {"train": make_split(name, "train", per_class=per_class_train),
                  "test": make_split(name, "test", per_class=per_class_test)}
        WRITERS[name](root, splits)


def _idx(path: Path, array: np.ndarray) -> None:
    # IDX: zero, zero, type 0x08 (uint8), number of dimensions, then big-endian sizes and the data.
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def _mnist_like(folder: str):
    def write(root: Path, splits) -> None:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = splits[split]
            _idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images[:, 0])
            _idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return write


def _emnist(root: Path, splits) -> None:
    for split, (images, labels) in splits.items():
        raw = root / "EMNIST" / "raw"
        _idx(raw / f"emnist-letters-{split}-images-idx3-ubyte", images[:, 0].transpose(0, 2, 1))
        _idx(raw / f"emnist-letters-{split}-labels-idx1-ubyte", labels + 1)


def _cifar10(root: Path, splits) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = splits["train"]
    batches = [(f"data_batch_{i + 1}", part) for i, part in enumerate(np.array_split(np.arange(len(labels)), 5))]
    for filename, part in [*batches, ("test_batch", None)]:
        x, y = (images[part], labels[part]) if part is not None else splits["test"]
        entry = {"data": x.reshape(len(x), -1), "labels": [int(v) for v in y], "batch_label": filename}
        (folder / filename).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": list(definitions.info("cifar10").classes), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _svhn(root: Path, splits) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        # SVHN's .mat files hold X as H×W×C×N and the digit 0 as label 10.
        scipy.io.savemat(root / f"{split}_32x32.mat", {
            "X": images.transpose(2, 3, 1, 0), "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})


WRITERS = {"mnist": _mnist_like("MNIST"), "fashion_mnist": _mnist_like("FashionMNIST"), "emnist": _emnist,
           "cifar10": _cifar10, "svhn": _svhn}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.exists() else "absent"


@contextmanager
def accept_checksums(root: Path):
    """Make torchvision accept the generated CIFAR-10/SVHN files under `root` as the official ones.

    Test-only: torchvision refuses CIFAR-10 batches (pickles) and SVHN files whose MD5 is not the
    official one, and so does seeding; here the class tables are pointed at these files' real MD5s.
    """
    cifar, svhn = torchvision.datasets.CIFAR10, torchvision.datasets.SVHN
    folder = Path(root) / cifar.base_folder
    with (mock.patch.object(cifar, "train_list", [[f, _md5(folder / f)] for f, _ in cifar.train_list]),
          mock.patch.object(cifar, "test_list", [[f, _md5(folder / f)] for f, _ in cifar.test_list]),
          mock.patch.object(cifar, "meta", {**cifar.meta, "md5": _md5(folder / cifar.meta["filename"])}),
          mock.patch.object(svhn, "split_list", {split: [url, filename, _md5(Path(root) / filename)]
                                                 for split, (url, filename, _) in svhn.split_list.items()})):
        yield


def seed_raw(store, settings, root: Path, **kwargs) -> list[dict]:
    """`app.ingest.seed(..., from_dir=root)` with the generated files accepted; no progress bars."""
    with accept_checksums(root):
        return seed(store, settings, from_dir=root, **{"progress": False, **kwargs})


PER_CLASS_TRAIN, PER_CLASS_TEST = 6, 3  # 60 train / 30 test images for the 10-class datasets
K_TEST = 2  # cka_per_class of the seeded datasets: every class has PER_CLASS_TEST >= K_TEST test images
