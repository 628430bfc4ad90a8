"""The dataset routes over real HTTP on seeded S3, and image encoding/decoding."""

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from app.datasets import definitions
from app.datasets.images import decode_image, grid_png
from app.errors import InvalidInput
from tests.support.rawdata import K_TEST, PER_CLASS_TEST, make_split

MANIFEST_FIELDS = {"name", "classes", "num_classes", "image_shape", "mean", "std", "train_size", "test_size",
                   "cka_per_class", "sha256", "created_at"}


def _expected_cka(name: str):
    images, labels = make_split(name, "test", per_class=PER_CLASS_TEST)
    indices = np.concatenate([np.flatnonzero(labels == c)[:K_TEST] for c in range(definitions.info(name).num_classes)])
    return images[indices], labels[indices], indices


def test_list_names_all_five_with_their_manifests(seeded_client):
    items = seeded_client.get("/datasets").json()
    assert [item["name"] for item in items] == list(definitions.NAMES)
    assert all(item["seeded"] and MANIFEST_FIELDS <= item.keys() for item in items)


def test_list_on_empty_storage_says_nothing_is_seeded(client):
    assert client.get("/datasets").json() == [{"name": n, "seeded": False} for n in definitions.NAMES]


def test_manifest(seeded_client):
    body = seeded_client.get("/datasets/emnist").json()
    assert MANIFEST_FIELDS <= body.keys()
    assert body["classes"] == list("abcdefghijklmnopqrstuvwxyz") and body["image_shape"] == [1, 28, 28]
    assert set(body["sha256"]) == {"train.safetensors", "test.safetensors", "cka.safetensors"}
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize("path", ["/datasets/imagenet", "/datasets/imagenet/cka"])
def test_unknown_dataset_is_404_problem_json(seeded_client, path):
    r = seeded_client.get(path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "unknown dataset 'imagenet'" in r.json()["detail"] and "mnist" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/datasets/svhn", "/datasets/svhn/cka?format=png"])
def test_unseeded_dataset_is_404_saying_how_to_seed_it(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "scv datasets seed svhn" in r.json()["detail"]


@pytest.mark.parametrize("name", definitions.NAMES)
def test_cka_as_safetensors_is_the_stored_object(seeded_client, name):
    r = seeded_client.get(f"/datasets/{name}/cka")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    manifest = seeded_client.get(f"/datasets/{name}").json()
    assert hashlib.sha256(r.content).hexdigest() == manifest["sha256"]["cka.safetensors"]
    tensors = load(r.content)
    images, labels, indices = _expected_cka(name)
    assert tensors["images"].dtype == torch.uint8 and np.array_equal(tensors["images"].numpy(), images)
    assert tensors["labels"].tolist() == labels.tolist() and tensors["indices"].tolist() == indices.tolist()


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_cka_as_json(seeded_client, name):
    body = seeded_client.get(f"/datasets/{name}/cka", params={"format": "json"}).json()
    images, labels, indices = _expected_cka(name)
    assert body["classes"] == list(definitions.info(name).classes)
    assert body["image_shape"] == list(definitions.info(name).image_shape)
    assert body["labels"] == labels.tolist() and body["indices"] == indices.tolist()
    assert np.array_equal(np.array(body["images"], dtype=np.uint8), images)


@pytest.mark.parametrize("name", ["emnist", "svhn"])
def test_cka_as_png_is_one_row_per_class(seeded_client, name):
    r = seeded_client.get(f"/datasets/{name}/cka", params={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(r.content)))
    images = _expected_cka(name)[0]
    n, c, h, w = images.shape
    scale, pad, rows = 2, 2, definitions.info(name).num_classes
    assert grid.shape[:2] == (rows * (h * scale + pad) + pad, K_TEST * (w * scale + pad) + pad)
    for i in range(n):
        top, left = pad + (i // K_TEST) * (h * scale + pad), pad + (i % K_TEST) * (w * scale + pad)
        cell = grid[top:top + h * scale:scale, left:left + w * scale:scale]
        assert np.array_equal(cell if c == 1 else cell.transpose(2, 0, 1), images[i][0] if c == 1 else images[i])


def test_cka_format_is_validated(seeded_client):
    r = seeded_client.get("/datasets/mnist/cka", params={"format": "gif"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "format"


def test_damaged_object_is_a_502_naming_the_dataset(client, settings, seeded_settings, store):
    # The seeded bucket is shared: copy mnist into this test's own bucket, with one byte flipped.
    for obj in ("manifest.json", "cka.safetensors"):
        data = store.get_bytes(bucket=seeded_settings.minio_dataset_bucket, key=f"mnist/{obj}")
        if obj == "cka.safetensors":
            data = data[:-1] + bytes([data[-1] ^ 1])
        store.put(bucket=settings.minio_dataset_bucket, key=f"mnist/{obj}", data=data)
    r = client.get("/datasets/mnist/cka")
    assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert "'mnist'" in body["detail"] and "scv datasets seed mnist --force" in body["detail"]
    assert body["dataset"] == "mnist" and body["object"] == "mnist/cka.safetensors"


def test_openapi_documents_the_routes(seeded_client):
    paths = seeded_client.get("/openapi.json").json()["paths"]
    assert {"/datasets", "/datasets/{name}", "/datasets/{name}/cka"} <= paths.keys()
    assert paths["/datasets/{name}/cka"]["get"]["summary"]


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)  # the mode follows the array: L, RGB, RGBA, I;16
    return out.getvalue()


def test_decode_image_round_trips_png_and_reads_jpeg():
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert decode_image(_png(grey), max_pixels=10_000).tolist() == [grey.tolist()]
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(rgb), max_pixels=10_000).numpy(), rgb.transpose(2, 0, 1))
    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    assert decode_image(_png(rgba), max_pixels=10_000).shape == (3, 32, 32)
    deep = np.array([[0, 257 * 100], [65535, 257]], dtype=np.uint16)  # 16-bit greyscale PNG
    assert decode_image(_png(deep), max_pixels=100).tolist() == [[[0, 100], [255, 1]]]
    jpeg = decode_image(_png(np.full((8, 8, 3), 200, np.uint8), "JPEG"), max_pixels=100)
    assert jpeg.shape == (3, 8, 8) and abs(int(jpeg.float().mean()) - 200) <= 2


@pytest.mark.parametrize("data", [b"", b"not an image", _png(np.zeros((4, 4), np.uint8))[:30]])
def test_decode_image_refuses_undecodable_bytes(data):
    with pytest.raises(InvalidInput, match="not a decodable PNG or JPEG"):
        decode_image(data, max_pixels=10_000)


def test_decode_image_refuses_too_many_pixels_before_decoding():
    with pytest.raises(InvalidInput, match="exceeds the limit of 1000 pixels"):
        decode_image(_png(np.zeros((100, 100), np.uint8)), max_pixels=1000)
    bmp = io.BytesIO()
    Image.new("L", (4, 4)).save(bmp, format="BMP")
    with pytest.raises(InvalidInput):
        decode_image(bmp.getvalue(), max_pixels=1000)


def test_grid_png_lays_out_rows_of_ncols():
    images = torch.arange(5 * 2 * 3, dtype=torch.uint8).reshape(5, 1, 2, 3)
    grid = np.asarray(Image.open(io.BytesIO(grid_png(images, ncols=2, scale=1, pad=1))))
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)
    assert np.array_equal(grid[1 + 2 * 3:1 + 2 * 3 + 2, 1:4], images[4, 0].numpy())
