"""POST /models/{version}/predict against offline evaluation, and models that must never be loaded."""

import hashlib
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import models
from app.datasets.service import DatasetService
from app.registry.inference import MAX_IMAGES
from app.registry.service import ModelRegistry
from app.storage.s3 import store_from_settings
from tests.support.registry import put_model
from tests.support.waiting import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
COUNT = 12


@pytest.fixture(scope="module")
def trained(seeded_client, seeded_settings):
    """A real model trained through POST /train, its downloaded bytes, and some seeded test images."""
    version = train(seeded_client, dataset="mnist", layers=SMALL_NET, batch_size=16)["version"]
    assert wait_for(seeded_client, version)["status"] == "succeeded"
    blob = seeded_client.get(f"/models/{version}").content
    images, labels = DatasetService(store=store_from_settings(seeded_settings), settings=seeded_settings
                                    ).load_split("mnist", "test")
    return version, blob, images[:COUNT], labels[:COUNT]


def offline(blob: bytes, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities of the downloaded model file, rebuilt and run here."""
    model, header = models.load_model(blob), models.read_header(blob)
    norm = header["normalization"]
    with torch.no_grad():
        return torch.softmax(model(models.normalize(images, norm["mean"], norm["std"])), dim=1)


def png(array: torch.Tensor, mode: str | None = None) -> bytes:
    image = Image.fromarray(array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


MARGIN = 0.01  # bf16 keeps about three significant digits: a top-2 gap wider than this cannot flip


def check(response, expected: torch.Tensor, classes: list[str], *, exact: bool = False) -> torch.Tensor:
    """The predictions match offline float32 evaluation: to 1e-5 when `exact` (fp32), else to bf16's precision
    with the label exact wherever the top two classes are clearly apart; returns the probabilities."""
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    got, labels = torch.tensor([p["probabilities"] for p in predictions]), [p["label"] for p in predictions]
    assert [p["class"] for p in predictions] == [classes[label] for label in labels]
    if exact:
        assert labels == expected.argmax(1).tolist()
        assert got == pytest.approx(expected, abs=1e-5)
        return got
    assert got == pytest.approx(expected, rel=0.02, abs=1e-3)
    top = expected.topk(2, dim=1).values
    for label, row, (first, second) in zip(labels, expected, top.tolist(), strict=True):
        if first - second > MARGIN:
            assert label == int(row.argmax())
        else:  # a near tie: either of the close classes is right
            assert row[label] >= first - MARGIN
    return got


def test_predict_agrees_with_offline_evaluation_for_png_and_json(seeded_client, trained):
    version, blob, images, _ = trained
    expected = offline(blob, images)
    classes = models.read_header(blob)["classes"]
    files = [("files", (f"{i}.png", png(img), "image/png")) for i, img in enumerate(images)]
    check(seeded_client.post(f"/models/{version}/predict", files=files), expected, classes)
    check(seeded_client.post(f"/models/{version}/predict", json={"images": images.tolist()}), expected, classes)
    # H×W arrays for a one-channel model, and RGB files converted to its one channel
    check(seeded_client.post(f"/models/{version}/predict", json={"images": images[:, 0].tolist()}),
          expected, classes)
    rgb = [("files", ("rgb.png", png(img, "RGB"), "image/png")) for img in images[:3]]
    check(seeded_client.post(f"/models/{version}/predict", files=rgb), expected[:3], classes)
    seeded = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (2, 3, *images.shape[2:]), dtype=torch.uint8, generator=seeded)
    as_grey = torch.stack([torch.from_numpy(np.array(Image.fromarray(c.permute(1, 2, 0).numpy()).convert("L")))[None]
                           for c in colour])  # what Pillow's RGB → L gives
    files = [("files", ("c.png", png(c), "image/png")) for c in colour]
    check(seeded_client.post(f"/models/{version}/predict", files=files), offline(blob, as_grey), classes)


def test_auto_precision_is_bf16_where_the_cpu_has_it_and_exact_float32_elsewhere(seeded_client, trained,
                                                                                    monkeypatch):
    version, blob, images, _ = trained
    expected, classes = offline(blob, images), models.read_header(blob)["classes"]
    if models.pick_device(seeded_client.app.state.registry.device) != "cpu":
        pytest.skip("the CPU capability check decides only on CPU")
    url, body = f"/models/{version}/predict", {"images": images.tolist()}
    registry = seeded_client.app.state.registry
    monkeypatch.setattr(registry, "cpu_bf16", False)  # SCV_CPU_BF16=0: as on a CPU without AVX512-BF16 or AMX
    fp32 = check(seeded_client.post(url, json=body), expected, classes, exact=True)
    monkeypatch.setattr(registry, "cpu_bf16", True)
    fast = check(seeded_client.post(url, json=body), expected, classes)
    assert (fast - fp32).abs().max() > 1e-5  # bf16 did run: float32 agrees with offline evaluation to 1e-5


def test_jpeg_files_are_accepted(seeded_client, trained):
    version, _, images, _ = trained
    buffer = io.BytesIO()
    Image.fromarray(images[0, 0].numpy()).save(buffer, format="JPEG", quality=95)
    r = seeded_client.post(f"/models/{version}/predict", files=[("files", ("a.jpg", buffer.getvalue(), "image/jpeg"))])
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image with almost no data: decoding it would take gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_images_are_refused_with_a_reason(seeded_client, trained):
    version, _, images, _ = trained
    _, height, width = images.shape[1:]
    url = f"/models/{version}/predict"

    def post_file(data: bytes):
        return seeded_client.post(url, files=[("files", ("x.png", data, "image/png"))])

    wrong = post_file(png(torch.zeros(1, height - 2, width, dtype=torch.uint8)))
    assert wrong.status_code == 422 and wrong.json()["field"] == "files[0]"
    assert f"expected {height}×{width}" in wrong.json()["detail"]
    assert f"got {height - 2}×{width}" in wrong.json()["detail"]
    bigger = post_file(png(torch.zeros(1, height + 2, width, dtype=torch.uint8)))
    assert bigger.status_code == 422 and f"{height}×{width}" in bigger.json()["detail"]
    assert post_file(b"not an image").status_code == 422
    # decompression bombs: refused from the PNG header, never decoded
    for size in (30000, 5000):
        bomb = post_file(_bomb_png(size, size))
        assert bomb.status_code in (413, 422) and "pixels" in bomb.json()["detail"]
    three = seeded_client.post(url, json={"images": [torch.zeros(3, height, width, dtype=torch.int64).tolist()]})
    assert three.status_code == 422 and "channels" in three.json()["detail"]
    small = seeded_client.post(url, json={"images": [[[0] * width] * (height - 1)]})
    assert small.status_code == 422 and f"got {height - 1}×{width}" in small.json()["detail"]
    for bad in ([[[256] * width] * height], [[[0.5] * width] * height], [[[0] * width, [0]]]):
        assert seeded_client.post(url, json={"images": bad}).status_code == 422
    assert seeded_client.post(url, json={"images": []}).status_code == 422
    many = seeded_client.post(url, json={"images": [[[0] * width] * height] * (MAX_IMAGES + 1)})
    assert many.status_code == 413 and str(MAX_IMAGES) in many.json()["detail"]
    assert seeded_client.post(url, content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert seeded_client.post("/models/no-such-model/predict", json={"images": [[[0]]]}).status_code == 404


class Marker:
    """Unpickling this creates a file: proof that a payload was (or was not) deserialized."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "garbage"])
def test_non_safetensors_models_are_refused_and_never_unpickled(client, settings, store, tmp_path, kind):
    marker = tmp_path / "unpickled"
    payload = {"pickle": lambda: pickle.dumps(Marker(str(marker))),
               "torch.save": lambda: _torch_save(Marker(str(marker))),
               "garbage": lambda: b"\x00" * 64}[kind]()
    put_model(store, settings.minio_model_bucket, "evil", db=client.app.state.db, blob=payload)
    r = client.post("/models/evil/predict", json={"images": [[[0] * 4] * 4]})
    assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
    assert "refused" in r.json()["detail"] and "not an SCV model file" in r.json()["detail"]
    assert not marker.exists()
    if kind == "pickle":  # the payload is live: unpickling it would have left the marker
        pickle.loads(payload)  # noqa: S301
        assert marker.exists()


def _torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weights": obj}, buffer)
    return buffer.getvalue()


def test_a_model_whose_bytes_do_not_match_its_sha256_is_refused(client, settings, store):
    put_model(store, settings.minio_model_bucket, "tampered", db=client.app.state.db,
              sha256=hashlib.sha256(b"other bytes").hexdigest())
    r = client.post("/models/tampered/predict", json={"images": [[[0] * 4] * 4]})
    assert r.status_code == 502 and "sha256" in r.json()["detail"]


def test_a_deleted_model_is_not_served_from_the_model_cache(client, settings, store):
    put_model(store, settings.minio_model_bucket, "cached", db=client.app.state.db)
    body = {"images": [[[0] * 4] * 4]}
    assert client.post("/models/cached/predict", json=body).status_code == 200
    replica = ModelRegistry(store=store, settings=settings, db=client.app.state.db)  # another API process
    replica.delete("cached")
    assert client.post("/models/cached/predict", json=body).status_code == 404
