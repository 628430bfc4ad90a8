"""The analysis routes through real HTTP: CKA matrices, activation maps and top images of stored models."""

import io
import math

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load as load_tensors

import models
from app.analysis.maths import cka
from app.analysis.plots import to_uint8_maps, viridis
from app.main import create_app
from app.storage.s3 import store_from_settings
from tests.support.layers import record_layers
from tests.support.rawdata import seed_raw, write_raw
from tests.support.registry import store_model
from tests.support.s3 import make_settings
from tests.support.waiting import train, wait_for

C = [{"type": "Conv2d", "out_channels": n, "kernel_size": 3, "padding": 1} for n in (8, 16, 32)]
RELU, POOL = {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}
# Conv/ReLU/pool blocks, then the logits: 11 modules once the final Linear is appended. Adjacent modules
# differ enough here for CKA to tell them apart across seeds (BatchNorm after a conv would not).
TWIN_NET = [C[0], RELU, POOL, C[1], RELU, POOL, C[2], RELU, POOL, {"type": "Flatten"}]
MLP = [{"type": "Flatten"}, {"type": "Linear", "out_features": 16}, {"type": "ReLU"}]
PER_CLASS_CKA = 5


@pytest.fixture(scope="module")
def lab(s3, tmp_path_factory):
    """An app on its own MNIST and CIFAR-10 (20 train, 5 test = 5 CKA images per class) with two models of
    one design trained through POST /train with seeds 0 and 1 (`twin-0`, `twin-1`), and two untrained ones:
    `mlp` (MNIST, 4 layers) and `rgb` (CIFAR-10, the twins' design)."""
    root = tmp_path_factory.mktemp("lab-raw")
    write_raw(root, per_class_train=20, per_class_test=PER_CLASS_CKA, names=["mnist", "cifar10"])
    settings = make_settings(s3, tmp_path_factory.mktemp("lab-data"), SCV_MAX_CONCURRENT_JOBS=2)
    seed_raw(store_from_settings(settings), settings, root, names=["mnist", "cifar10"], cka_per_class=PER_CLASS_CKA)
    with TestClient(create_app(settings)) as client:
        for seed in (0, 1):
            train(client, dataset="mnist", version=f"twin-{seed}", layers=TWIN_NET, epochs=3, batch_size=16, seed=seed)
        for seed in (0, 1):
            assert wait_for(client, f"twin-{seed}")["status"] == "succeeded"
        store_model(client, "mlp", dataset="mnist", layers=MLP)
        store_model(client, "rgb", dataset="cifar10", layers=TWIN_NET, seed=3)
        yield client


def offline(client, version: str, split: str = "cka") -> tuple[torch.nn.Sequential, dict, dict]:
    """The downloaded model, its header, and its dataset's `cka` set or `test` split read from storage."""
    blob = client.get(f"/models/{version}").content
    header = models.read_header(blob)
    settings = client.app.state.settings
    data = store_from_settings(settings).get_bytes(bucket=settings.minio_dataset_bucket,
                                                   key=f"{header['dataset']}/{split}.safetensors")
    return models.load_model(blob), header, load_tensors(data)


def normalised(images: torch.Tensor, header: dict) -> torch.Tensor:
    return models.normalize(images, header["normalization"]["mean"], header["normalization"]["std"])


def get_json(client, url: str, **params) -> dict:
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def get_png(client, url: str, **params) -> Image.Image:
    response = client.get(url, params={**params, "format": "png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize("estimator", ["linear", "debiased"])
def test_a_model_against_itself_has_ones_on_the_diagonal(lab, estimator):
    result = get_json(lab, "/models/twin-0/cka", estimator=estimator)
    matrix = torch.tensor(result["matrix"])
    assert result["estimator"] == estimator and len(result["layers"]) == 11
    assert result["layers"][:2] == ["0:Conv2d", "1:ReLU"] and result["layers"][-1] == "10:Linear"
    assert torch.allclose(matrix.diagonal(), torch.ones(11), atol=1e-6)
    assert torch.allclose(matrix, matrix.T, atol=1e-6)
    against = get_json(lab, "/models/twin-0/cka", estimator=estimator, against="twin-0")
    assert against["other_layers"] == result["layers"]
    assert torch.allclose(torch.tensor(against["matrix"]), matrix, atol=1e-6)
    heatmap = get_png(lab, "/models/twin-0/cka", estimator=estimator)
    assert heatmap.text["Title"] == f"CKA ({estimator}): twin-0"


def test_each_layer_of_one_seed_is_most_similar_to_its_counterpart_in_the_other(lab):
    matrix = torch.tensor(get_json(lab, "/models/twin-0/cka", against="twin-1")["matrix"])
    assert not torch.allclose(matrix, torch.tensor(get_json(lab, "/models/twin-0/cka")["matrix"]), atol=1e-3)
    # Flatten repeats the pool before it exactly, so a counterpart that ties with the maximum counts.
    found = [bool(row[i] >= row.max() - 1e-9) for i, row in enumerate(matrix)]
    assert sum(found) > len(found) / 2, f"counterpart is the best match for layers {found}"


def test_the_matrix_is_cka_of_each_models_layers_on_its_normalised_cka_set(lab):
    result = get_json(lab, "/models/twin-0/cka", against="twin-1", estimator="debiased")
    (net, header, cka_set), (other, other_header, _) = offline(lab, "twin-0"), offline(lab, "twin-1")
    assert len(cka_set["images"]) == 10 * PER_CLASS_CKA
    rows = record_layers(net, normalised(cka_set["images"], header))
    cols = record_layers(other, normalised(cka_set["images"], other_header))
    for i, j in [(0, 0), (2, 5), (7, 10), (10, 3)]:
        assert result["matrix"][i][j] == pytest.approx(cka(rows[i][1], cols[j][1], "debiased"), abs=1e-5)


def test_the_heatmap_has_a_square_cell_per_pair_a_colour_bar_labels_and_a_title(lab):
    result = get_json(lab, "/models/twin-0/cka", against="mlp")
    image = get_png(lab, "/models/twin-0/cka", against="mlp")
    assert image.mode == "RGB" and image.text["Title"] == "CKA (linear): twin-0 vs mlp"
    pixels = image.load()
    # Cells and colour bar are viridis colours, never grey; text and background are grey or white.
    coloured = [[len(set(pixels[x, y])) > 1 for x in range(image.width)] for y in range(image.height)]
    columns = [x for x in range(image.width) if any(row[x] for row in coloured)]
    grid_left = columns[0]
    grid_right = next(x for x in columns if x + 1 not in set(columns))  # the white gap before the bar
    rows = [y for y in range(image.height) if coloured[y][grid_left]]
    grid_top, grid_bottom = rows[0], rows[-1]
    cell = (grid_right - grid_left + 1) / 4
    assert cell == (grid_bottom - grid_top + 1) / 11 and cell >= 12
    for r, c in [(0, 0), (5, 2), (10, 3), (7, 1)]:
        centre = (int(grid_left + (c + 0.5) * cell), int(grid_top + (r + 0.5) * cell))
        assert pixels[centre] == viridis(result["matrix"][r][c])
    bar = [x for x in columns if x > grid_right]
    assert pixels[bar[0], grid_top] == viridis(1.0) and pixels[bar[0], grid_bottom] == viridis(0.0)
    ink = [[sum(pixels[x, y]) < 300 and not coloured[y][x] for x in range(image.width)] for y in range(image.height)]
    for r in range(11):  # a row label left of each row, a column label under each column
        band = range(int(grid_top + r * cell), int(grid_top + (r + 1) * cell))
        assert any(ink[y][x] for y in band for x in range(grid_left))
    for c in range(4):
        band = range(int(grid_left + c * cell), int(grid_left + (c + 1) * cell))
        assert any(ink[y][x] for y in range(grid_bottom + 1, image.height) for x in band)
    assert any(any(row) for row in ink[:grid_top])  # the title


def grid_tiles(image: Image.Image, *, count: int, tile_hw: tuple[int, int], pad: int = 2) -> list[torch.Tensor]:
    """Cut a grid of `count` tiles in rows of ceil(sqrt(count)) out of `image`, after checking its size."""
    ncols = math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    (h, w), pixels = tile_hw, torch.tensor(list(image.getdata())).reshape(image.height, image.width, -1)
    scale = ((image.width - pad) / ncols - pad) / w
    assert scale == int(scale) >= 1 and image.height == pad + nrows * (h * int(scale) + pad)
    step_h, step_w, scale = h * int(scale) + pad, w * int(scale) + pad, int(scale)
    tiles = []
    for i in range(nrows * ncols):
        row, col = divmod(i, ncols)
        tile = pixels[pad + row * step_h:][:h * scale, pad + col * step_w:][:, :w * scale].permute(2, 0, 1)
        if i >= count:  # an empty slot is background: the grid's mid-grey
            assert (tile == 128).all()
        else:
            assert torch.equal(tile, tile[:, ::scale, ::scale].repeat_interleave(scale, 1).repeat_interleave(scale, 2))
            tiles.append(tile[:, ::scale, ::scale])
    return tiles


@pytest.mark.parametrize(("version", "layer", "channels"), [("twin-1", 4, 16), ("rgb", 0, 8)])
def test_activations_are_the_layer_output_of_one_cka_sample(lab, version, layer, channels):
    result = get_json(lab, f"/models/{version}/activations", layer=layer, sample=7, format="json")
    net, header, cka_set = offline(lab, version)
    with torch.no_grad():
        expected = net[: layer + 1](normalised(cka_set["images"][7:8], header))[0]
    assert result["name"] == f"{layer}:{type(net[layer]).__name__}" and result["sample"] == 7
    assert (result["label"], result["index"]) == (int(cka_set["labels"][7]), int(cka_set["indices"][7]))
    assert result["shape"] == list(expected.shape) and expected.shape[0] == channels
    assert torch.allclose(torch.tensor(result["values"]), expected, atol=1e-5)

    image = get_png(lab, f"/models/{version}/activations", layer=layer, sample=7)
    tiles = grid_tiles(image.convert("L"), count=channels, tile_hw=tuple(expected.shape[1:]))
    assert torch.equal(torch.stack(tiles), to_uint8_maps(torch.tensor(result["values"])))


def test_a_flat_layer_is_drawn_as_one_strip(lab):
    values = get_json(lab, "/models/twin-0/activations", layer=10, sample=0, format="json")["values"]
    image = get_png(lab, "/models/twin-0/activations", layer=10, sample=0).convert("L")
    (strip,) = grid_tiles(image, count=1, tile_hw=(8, 10))
    assert (strip == strip[:, :1]).all()  # eight equal rows
    assert torch.equal(strip[:, 0], to_uint8_maps(torch.tensor(values))[0, :, 0])


@pytest.mark.parametrize(("version", "layer", "channel", "k"), [("twin-0", 4, 3, 7), ("rgb", 1, 5, 10)])
def test_top_images_are_the_highest_mean_activations_of_the_test_split(lab, version, layer, channel, k):
    result = get_json(lab, f"/models/{version}/top-images", layer=layer, channel=channel, k=k)
    net, header, test = offline(lab, version, "test")
    with torch.no_grad():
        every = net[: layer + 1](normalised(test["images"], header))[:, channel].flatten(1).mean(dim=1)
    values, indices = result["activations"], result["indices"]
    assert len(indices) == len(set(indices)) == k and values == sorted(values, reverse=True)
    assert torch.allclose(torch.tensor(values), every[indices], atol=1e-5)
    others = torch.ones(len(every), dtype=torch.bool).index_fill_(0, torch.tensor(indices), False)
    assert every[others].max() <= values[-1] + 1e-5
    assert result["labels"] == test["labels"][indices].tolist()
    assert (result["layer"], result["channel"]) == (layer, channel)

    image = get_png(lab, f"/models/{version}/top-images", layer=layer, channel=channel, k=k)
    tiles = grid_tiles(image, count=k, tile_hw=tuple(test["images"].shape[2:]))
    assert torch.equal(torch.stack(tiles), test["images"][indices])


def test_the_images_that_drive_a_logit_highest_are_of_its_class(lab):
    result = get_json(lab, "/models/twin-1/top-images", layer=10, channel=2, k=PER_CLASS_CKA)
    assert result["labels"] == [2] * PER_CLASS_CKA


@pytest.mark.parametrize(("path", "params", "field"), [
    ("activations", {"layer": 11, "sample": 0}, "layer"),
    ("activations", {"layer": -1, "sample": 0}, "layer"),
    ("activations", {"layer": 0, "sample": 10 * PER_CLASS_CKA}, "sample"),
    ("activations", {"layer": 0}, "sample"),
    ("top-images", {"layer": 0, "channel": 8}, "channel"),
    ("top-images", {"layer": 11, "channel": 0}, "layer"),
    ("top-images", {"layer": 0, "channel": 0, "k": 0}, "k"),
    ("top-images", {"layer": 0, "channel": 0, "k": 101}, "k"),
    ("cka", {"estimator": "rbf"}, "estimator"),
    ("cka", {"format": "gif"}, "format"),
    ("cka", {"against": "a..b"}, "against"),
])
def test_bad_parameters_are_422_naming_the_parameter(lab, path, params, field):
    response = lab.get(f"/models/twin-0/{path}", params=params)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


def test_against_a_model_of_another_dataset_is_422_naming_against(lab):
    response = lab.get("/models/twin-0/cka", params={"against": "rgb"})
    assert response.status_code == 422 and response.json()["field"] == "against"
    assert "cifar10" in response.json()["detail"] and "mnist" in response.json()["detail"]


def test_unknown_models_are_404_and_training_ones_409(lab):
    assert lab.get("/models/nope/cka").status_code == 404
    assert lab.get("/models/twin-0/cka", params={"against": "nope"}).status_code == 404
    version = train(lab, dataset="mnist", layers=TWIN_NET, epochs=100, batch_size=1)["version"]
    try:
        response = lab.get(f"/models/{version}/top-images", params={"layer": 0, "channel": 0})
        assert response.status_code == 409 and response.json()["job"] == f"/train/{version}"
    finally:
        lab.delete(f"/train/{version}")
        wait_for(lab, version)


def test_aliases_stand_for_versions_in_both_places(lab):
    registry = lab.app.state.registry
    registry.put_alias("left", "twin-0")
    registry.put_alias("right", "twin-1")
    try:
        direct = get_json(lab, "/models/twin-0/cka", against="twin-1")
        response = lab.get("/models/@left/cka", params={"against": "@right"})
        assert response.status_code == 200 and response.headers["x-scv-version"] == "twin-0"
        assert response.json() == direct
        for path in ("activations", "top-images"):
            r = lab.get(f"/models/@right/{path}", params={"layer": 0, "sample": 0, "channel": 0, "format": "json"})
            assert r.status_code == 200 and r.headers["x-scv-version"] == "twin-1", path
        missing = lab.get("/models/twin-0/cka", params={"against": "@nope"})
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]
        assert lab.get("/models/twin-0/cka", params={"against": "@a..b"}).json()["field"] == "against"
    finally:
        registry.delete_alias("left")
        registry.delete_alias("right")


def test_results_are_cached_per_model_file_and_parameters(lab, monkeypatch):
    store_model(lab, "remade", dataset="mnist", layers=MLP, seed=1)
    first = get_json(lab, "/models/remade/cka")
    registry, computed = lab.app.state.registry, []  # an analysis loads its network only when it computes
    load = registry.load
    monkeypatch.setattr(registry, "load", lambda version, epoch=None: computed.append(version) or load(version, epoch))
    get_png(lab, "/models/remade/cka")  # the same result, drawn
    assert computed == []
    get_json(lab, "/models/remade/cka", estimator="debiased")
    assert computed == ["remade"]
    top = [get_json(lab, "/models/remade/top-images", layer=1, channel=0, k=k) for k in (9, 4)]
    assert computed == ["remade"] * 2  # one ranking serves every k
    assert top[1]["indices"] == top[0]["indices"][:4] and top[1]["activations"] == top[0]["activations"][:4]
    # The same version re-created with other weights is a new model file: never the old result.
    assert lab.delete("/models/remade").status_code == 204
    store_model(lab, "remade", dataset="mnist", layers=MLP, seed=2)
    second = get_json(lab, "/models/remade/cka")
    assert second["matrix"] != first["matrix"] and computed == ["remade"] * 3
