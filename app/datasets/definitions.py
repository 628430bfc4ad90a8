"""The five datasets' fixed facts: torchvision class and arguments, class names, image shape."""

import string
from dataclasses import dataclass

from app.errors import DatasetNotFound

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str  # attribute of torchvision.datasets
    split_kwargs: dict[str, dict]  # constructor arguments per split, besides root/download
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # C, H, W
    layout: str  # where torchvision expects the files under its `root` (shown in errors)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_DIGITS = tuple(string.digits)
_MNIST_SPLITS = {"train": {"train": True}, "test": {"train": False}}
_IDX = "{d}/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, " \
       "t10k-labels-idx1-ubyte (uncompressed, as torchvision leaves them after downloading)"

CATALOG: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("mnist", "MNIST", _MNIST_SPLITS, _DIGITS, (1, 28, 28), _IDX.format(d="MNIST")),
    DatasetInfo("fashion_mnist", "FashionMNIST", _MNIST_SPLITS,
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"), (1, 28, 28), _IDX.format(d="FashionMNIST")),
    DatasetInfo("cifar10", "CIFAR10", _MNIST_SPLITS,
                ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
                (3, 32, 32), "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta "
                             "(the official files: torchvision checks their MD5 before unpickling)"),
    DatasetInfo("svhn", "SVHN", {"train": {"split": "train"}, "test": {"split": "test"}}, _DIGITS,
                (3, 32, 32), "train_32x32.mat, test_32x32.mat directly in the root "
                             "(the official files: torchvision checks their MD5)"),
    # torchvision's letters split labels a..z as 1..26 (0 is an unused "N/A"); we store 0..25.
    DatasetInfo("emnist", "EMNIST", {"train": {"split": "letters", "train": True},
                                     "test": {"split": "letters", "train": False}},
                tuple(string.ascii_lowercase), (1, 28, 28),
                "EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte (uncompressed)"),
)}
NAMES: tuple[str, ...] = tuple(CATALOG)


def info(name: str) -> DatasetInfo:
    """The facts of one dataset; DatasetNotFound for a name outside the five."""
    try:
        return CATALOG[name]
    except KeyError:
        raise DatasetNotFound(name) from None
