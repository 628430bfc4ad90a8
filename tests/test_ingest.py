"""Seeding from torchvision-format raw files into real S3, and verified loading back through the cache."""

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from app.datasets import definitions
from app.datasets.ingest import seed
from app.datasets.service import DatasetService
from app.errors import DatasetNotFound, DatasetNotSeeded, IntegrityError, InvalidInput
from tests.support.rawdata import K_TEST, PER_CLASS_TEST, PER_CLASS_TRAIN, make_split, seed_raw, write_raw

REPO = Path(__file__).resolve().parents[1]
OBJECTS = ("train.safetensors", "test.safetensors", "cka.safetensors", "manifest.json")


def _first_k(labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(num_classes)])


@pytest.mark.parametrize("name", definitions.NAMES)
def test_seeded_dataset_matches_the_raw_files(name, seeded_settings, store):
    datasets = DatasetService(store=store, settings=seeded_settings)
    manifest = datasets.manifest(name)
    info = definitions.info(name)
    assert manifest["classes"] == list(info.classes) and manifest["num_classes"] == info.num_classes
    assert manifest["image_shape"] == list(info.image_shape)
    assert manifest["cka_per_class"] == K_TEST
    for split, per_class in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
        images, labels = datasets.load_split(name, split)
        want_images, want_labels = make_split(name, split, per_class=per_class)
        # Exact equality covers shape, dtype, EMNIST turned upright with 0..25, SVHN's 10 read as 0.
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), want_images) and np.array_equal(labels.numpy(), want_labels)
        assert 0 <= int(labels.min()) and int(labels.max()) == info.num_classes - 1
        assert manifest[f"{split}_size"] == len(want_labels)
    train = make_split(name, "train", per_class=PER_CLASS_TRAIN)[0].astype(np.float64) / 255
    assert manifest["mean"] == pytest.approx(train.mean(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert manifest["std"] == pytest.approx(train.std(axis=(0, 2, 3)).tolist(), abs=1e-12)
    for obj in OBJECTS[:3]:
        stored = store.get_bytes(bucket=seeded_settings.minio_dataset_bucket, key=f"{name}/{obj}")
        assert manifest["sha256"][obj] == hashlib.sha256(stored).hexdigest()
        assert manifest["sizes"][obj] == len(stored)


def test_emnist_letters_are_upright_and_named_a_to_z(raw_root, seeded_settings, store):
    raw = (raw_root / "EMNIST/raw/emnist-letters-test-images-idx3-ubyte").read_bytes()
    raw_labels = np.frombuffer((raw_root / "EMNIST/raw/emnist-letters-test-labels-idx1-ubyte").read_bytes()[8:],
                               dtype=np.uint8)
    first_raw = np.frombuffer(raw[16:16 + 28 * 28], dtype=np.uint8).reshape(28, 28)
    images, labels = DatasetService(store=store, settings=seeded_settings).load_split("emnist", "test")
    assert raw_labels.min() == 1 and int(labels[0]) == raw_labels[0] - 1
    assert np.array_equal(images[0, 0].numpy(), first_raw.T) and not np.array_equal(first_raw, first_raw.T)
    assert definitions.info("emnist").classes[int(labels[0])] == "abcdefghijklmnopqrstuvwxyz"[raw_labels[0] - 1]


def test_svhn_digit_zero_is_label_zero(raw_root, seeded_settings, store):
    raw = scipy.io.loadmat(raw_root / "test_32x32.mat")["y"].ravel()
    _, labels = DatasetService(store=store, settings=seeded_settings).load_split("svhn", "test")
    assert 0 not in raw and 10 in raw
    assert labels.tolist() == [0 if y == 10 else int(y) for y in raw]


@pytest.mark.parametrize("name", definitions.NAMES)
def test_cka_set_is_the_first_k_test_images_of_each_class(name, seeded_settings, store):
    images, labels, indices = DatasetService(store=store, settings=seeded_settings).cka_set(name)
    test_images, test_labels = make_split(name, "test", per_class=PER_CLASS_TEST)
    want = _first_k(test_labels, K_TEST, definitions.info(name).num_classes)
    assert indices.dtype == torch.int64 and indices.tolist() == want.tolist()
    assert labels.tolist() == np.repeat(np.arange(definitions.info(name).num_classes), K_TEST).tolist()
    assert np.array_equal(images.numpy(), test_images[want])


def test_a_class_short_of_k_test_images_is_a_clear_error(tmp_path, settings, store):
    write_raw(tmp_path, per_class_train=2, per_class_test=1, names=["cifar10"])
    with pytest.raises(InvalidInput, match=r"cifar10: class 'airplane' has 1 test images, "
                                           r"fewer than --cka-per-class 2"):
        seed_raw(store, settings, tmp_path, names=["cifar10"], cka_per_class=2)
    with pytest.raises(DatasetNotSeeded):
        DatasetService(store=store, settings=settings).manifest("cifar10")


def test_cifar_batches_that_are_not_the_official_files_are_never_unpickled(tmp_path, settings, store):
    write_raw(tmp_path, per_class_train=1, per_class_test=1, names=["cifar10"])
    with pytest.raises(InvalidInput, match="official files: torchvision checks their MD5"):
        seed(store, settings, names=["cifar10"], from_dir=tmp_path, progress=False)
    assert list(store.list(bucket=settings.minio_dataset_bucket)) == []


def test_unknown_names_and_missing_files_fail_before_any_upload(tmp_path, settings, store):
    with pytest.raises(DatasetNotFound, match="known datasets: mnist"):
        seed(store, settings, names=["mnist", "imagenet"], from_dir=tmp_path, progress=False)
    with pytest.raises(InvalidInput, match=r"MNIST/raw/train-images-idx3-ubyte"):
        seed(store, settings, names=["mnist"], from_dir=tmp_path, progress=False)
    assert list(store.list(bucket=settings.minio_dataset_bucket)) == []


def _gzipped_copy(unpacked: Path, packed: Path) -> None:
    """The IDX files under `unpacked`, as distributed: each one `<name>.gz`, nothing unpacked beside it."""
    for path in unpacked.rglob("*-ubyte"):
        target = packed / path.relative_to(unpacked).with_name(f"{path.name}.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(path.read_bytes()))


IDX_NAMES = ["mnist", "fashion_mnist", "emnist"]


def test_gzipped_idx_files_seed_the_same_objects_as_unpacked_ones(tmp_path, settings, store):
    unpacked, packed = tmp_path / "unpacked", tmp_path / "packed"
    write_raw(unpacked, per_class_train=2, per_class_test=1, names=IDX_NAMES)
    _gzipped_copy(unpacked, packed)
    assert {p.suffix for p in packed.rglob("*") if p.is_file()} == {".gz"}
    from_gz = settings.model_copy(update={"minio_dataset_bucket": f"{settings.minio_dataset_bucket}-gz"})
    seed(store, settings, names=IDX_NAMES, from_dir=unpacked, cka_per_class=1, progress=False)
    seed(store, from_gz, names=IDX_NAMES, from_dir=packed, cka_per_class=1, progress=False)
    for name in IDX_NAMES:
        want = DatasetService(store=store, settings=settings).manifest(name)
        got = DatasetService(store=store, settings=from_gz).manifest(name)
        assert got["sha256"] == want["sha256"] and got["train_size"] == want["train_size"] > 0
    assert {p.suffix for p in packed.rglob("*") if p.is_file()} == {".gz"}  # nothing unpacked into DIR


def test_a_truncated_gz_file_is_named(tmp_path, settings, store):
    write_raw(tmp_path / "unpacked", per_class_train=1, per_class_test=1, names=["mnist"])
    _gzipped_copy(tmp_path / "unpacked", tmp_path / "packed")
    broken = tmp_path / "packed/MNIST/raw/t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-20])
    with pytest.raises(InvalidInput, match=r"MNIST/raw/t10k-images-idx3-ubyte.gz is not a complete gzip file"):
        seed(store, settings, names=["mnist"], from_dir=tmp_path / "packed", progress=False)
    assert list(store.list(bucket=settings.minio_dataset_bucket)) == []


def test_seeding_twice_uploads_nothing_the_second_time(tmp_path, settings, store):
    # 22,000 MNIST images make a train object above the 16 MiB part size: a multipart ETag.
    write_raw(tmp_path, per_class_train=2200, per_class_test=2, names=["mnist"])
    first = seed_raw(store, settings, tmp_path, names=["mnist"], cka_per_class=2)
    assert [(r["action"], r["objects"]) for r in first] == [("uploaded", list(OBJECTS))]
    stored = {o.key: (o.etag, o.last_modified) for o in store.list(bucket=settings.minio_dataset_bucket)}
    assert "-" in stored["mnist/train.safetensors"][0] and len(stored) == 4
    second = seed_raw(store, settings, tmp_path, names=["mnist"], cka_per_class=2)
    assert [(r["action"], r["bytes"], r["objects"]) for r in second] == [("skipped", 0, [])]
    assert {o.key: (o.etag, o.last_modified) for o in store.list(bucket=settings.minio_dataset_bucket)} == stored
    forced = seed_raw(store, settings, tmp_path, names=["mnist"], cka_per_class=2, force=True)
    assert forced[0]["action"] == "uploaded" and forced[0]["objects"] == list(OBJECTS)


def test_changing_k_uploads_only_the_cka_set_and_manifest(tmp_path, settings, store):
    write_raw(tmp_path, per_class_train=2, per_class_test=3, names=["fashion_mnist"])
    seed_raw(store, settings, tmp_path, cka_per_class=2, names=["fashion_mnist"])
    again = seed_raw(store, settings, tmp_path, cka_per_class=3, names=["fashion_mnist"])
    assert again[0]["objects"] == ["cka.safetensors", "manifest.json"]
    assert DatasetService(store=store, settings=settings).cka_set("fashion_mnist")[0].shape[0] == 30


def test_altered_object_is_refused_at_load_and_repaired_by_seed(tmp_path, settings, store):
    write_raw(tmp_path, per_class_train=3, per_class_test=2, names=["mnist"])
    seed_raw(store, settings, tmp_path, names=["mnist"], cka_per_class=1)
    key, bucket = "mnist/train.safetensors", settings.minio_dataset_bucket
    data = bytearray(store.get_bytes(bucket=bucket, key=key))
    data[-1] ^= 0xFF  # one pixel changed, same size: only the checksum can tell
    store.put(bucket=bucket, key=key, data=bytes(data))
    with pytest.raises(IntegrityError) as caught:
        DatasetService(store=store, settings=settings).load_split("mnist", "train")
    assert "'mnist'" in caught.value.detail and key in caught.value.detail
    assert "scv datasets seed mnist --force" in caught.value.detail
    assert not any((settings.data_dir / "cache").glob("*"))  # nothing unverified was kept
    repaired = seed_raw(store, settings, tmp_path, names=["mnist"], cka_per_class=1)
    assert repaired[0]["objects"] == ["train.safetensors"]
    images, _ = DatasetService(store=store, settings=settings).load_split("mnist", "train")
    assert np.array_equal(images.numpy(), make_split("mnist", "train", per_class=3)[0])


def test_a_second_service_loads_from_the_disk_cache_without_downloading(tmp_path, settings, store):
    write_raw(tmp_path / "raw", per_class_train=2, per_class_test=1, names=["svhn"])
    seed_raw(store, settings, tmp_path / "raw", names=["svhn"], cka_per_class=1)
    first = DatasetService(store=store, settings=settings).load_split("svhn", "train")
    cached = sorted(p.name for p in (settings.data_dir / "cache").iterdir())
    assert cached == [DatasetService(store=store, settings=settings).manifest("svhn")["sha256"]
                      ["train.safetensors"] + ".safetensors"]  # no temp files left behind
    # With the object gone from S3, only the verified local copy can answer.
    store.delete(bucket=settings.minio_dataset_bucket, key="svhn/train.safetensors")
    again = DatasetService(store=store, settings=settings).load_split("svhn", "train")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    cold = DatasetService(store=store, settings=settings.model_copy(update={"data_dir": tmp_path / "other"}))
    with pytest.raises(IntegrityError, match="is missing"):
        cold.load_split("svhn", "train")


def test_progress_bars_go_to_stderr_and_can_be_turned_off(tmp_path, settings, store, capfd):
    write_raw(tmp_path, per_class_train=1, per_class_test=1, names=["mnist"])
    seed(store, settings, names=["mnist"], from_dir=tmp_path, cka_per_class=1, progress=False)
    assert capfd.readouterr() == ("", "")
    seed(store, settings, names=["mnist"], from_dir=tmp_path, cka_per_class=1, force=True, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "fetch+convert mnist" in err and "upload mnist" in err


def test_the_scv_command_seeds_from_a_directory(tmp_path, settings, store):
    write_raw(tmp_path / "raw", per_class_train=1, per_class_test=1, names=["mnist"])
    env = {**os.environ, "MINIO_ENDPOINT": settings.minio_endpoint, "MINIO_ACCESS_KEY": settings.minio_access_key,
           "MINIO_SECRET_KEY": settings.minio_secret_key.get_secret_value(), "SCV_DATA_DIR": str(tmp_path),
           "MINIO_DATASET_BUCKET": settings.minio_dataset_bucket, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "app.cli", "datasets", "seed", "mnist", "--from-dir",
                          str(tmp_path / "raw"), "--cka-per-class", "1"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "mnist" in run.stdout and "uploaded" in run.stdout
    assert DatasetService(store=store, settings=settings).manifest("mnist")["train_size"] == 10
