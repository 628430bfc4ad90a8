"""The model file: a safetensors round trip, and refusal of everything that is not one."""

import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from models import FORMAT, ModelFileError, load_model, load_model_with_header, read_header, resolve_layers, save_model
from models.training import seeded_model

SHAPE, CLASSES = (1, 8, 8), ["a", "b", "c"]
LAYERS = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "BatchNorm2d"}, {"type": "ReLU"},
          {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}, {"type": "Linear", "out_features": 8},
          {"type": "BatchNorm1d"}, {"type": "Dropout", "p": 0.5}]


@pytest.fixture(scope="module")
def resolved() -> list[dict]:
    return resolve_layers(LAYERS, input_shape=SHAPE, num_classes=len(CLASSES))


@pytest.fixture(scope="module")
def trained(resolved: list[dict]) -> torch.nn.Sequential:
    model = seeded_model(resolved, seed=1)
    model.train()
    model(torch.randn(16, *SHAPE))  # moves BatchNorm running statistics off their defaults
    return model


def save(model: torch.nn.Module, layers: list[dict]) -> bytes:
    return save_model(model, layers=layers, input_shape=SHAPE, classes=CLASSES,
                      normalization={"mean": [0.5], "std": torch.tensor([0.25])}, dataset="mnist", version="v1")


def test_round_trip_gives_the_same_network(trained: torch.nn.Sequential, resolved: list[dict]) -> None:
    data = save(trained, resolved)
    model, header = load_model_with_header(data)
    assert not model.training
    assert header == {"format": FORMAT, "layers": resolved, "input_shape": list(SHAPE), "classes": CLASSES,
                      "normalization": {"mean": [0.5], "std": [0.25]}, "dataset": "mnist", "version": "v1"}
    before, after = trained.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert after["1.num_batches_tracked"].dtype == torch.int64
    x = torch.randn(5, *SHAPE)
    assert torch.equal(trained.eval()(x), model(x))


def test_the_same_network_always_saves_to_the_same_bytes(trained: torch.nn.Sequential, resolved: list[dict]) -> None:
    # safetensors orders the metadata as a freshly seeded hash map does: the file must not follow it
    files = {save(trained, resolved) for _ in range(8)}
    assert len(files) == 1 and struct.unpack("<Q", files.pop()[:8])[0] % 8 == 0  # the tensors stay aligned


def test_metadata_strings_are_json(trained: torch.nn.Sequential, resolved: list[dict]) -> None:
    length = struct.unpack("<Q", (data := save(trained, resolved))[:8])[0]
    meta = json.loads(data[8 : 8 + length])["__metadata__"]
    assert meta["format"] == "scv-sequential/1" and json.loads(meta["layers"]) == resolved
    assert read_header(data)["classes"] == CLASSES


def test_load_from_a_path(tmp_path: Path, trained: torch.nn.Sequential, resolved: list[dict]) -> None:
    path = tmp_path / "v1.safetensors"
    path.write_bytes(save(trained, resolved))
    assert isinstance(load_model(path), torch.nn.Sequential)
    assert isinstance(load_model(str(path)), torch.nn.Sequential)


def torch_save_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def with_metadata(model: torch.nn.Module, **changes: str) -> bytes:
    metadata = {"format": FORMAT, "layers": "[]", "input_shape": "[1, 8, 8]", "classes": json.dumps(CLASSES),
                "normalization": '{"mean": [0.5], "std": [0.25]}', "dataset": "mnist", "version": "v1"}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    return safetensors.torch.save(tensors, metadata={**metadata, **changes})


def test_refuses_what_is_not_a_model_file(trained: torch.nn.Sequential, resolved: list[dict]) -> None:
    good = save(trained, resolved)
    layers = json.dumps(resolved)
    other_layers = json.dumps(resolve_layers([], input_shape=SHAPE, num_classes=3))
    cases = {
        "zip": (torch_save_bytes(trained), "looks like a zip (torch.save) file"),
        "pickle": (pickle.dumps({"w": [1.0, 2.0]}), "looks like a pickle"),
        "random": (bytes(range(256)) * 4, "not an SCV model file"),
        "empty": (b"", "too short"),
        "truncated": (good[:-10], "truncated"),
        "header cut": (good[:100], "not an SCV model file"),
        "other format": (with_metadata(trained, layers=layers, format="gguf/2"), "format is 'gguf/2'"),
        "no metadata": (safetensors.torch.save({"w": torch.zeros(2)}), "no safetensors metadata"),
        "unresolved layers": (with_metadata(trained, layers=json.dumps(LAYERS)), "not fully resolved"),
        "bad layers": (with_metadata(trained, layers='[{"type": "__import__"}]'), "layers are invalid"),
        "tensors do not match": (with_metadata(trained, layers=other_layers), "do not match its layers"),
        "bad shape": (with_metadata(trained, layers=layers, input_shape='"big"'), "input_shape"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(ModelFileError) as caught:
            load_model(data)
        assert words in str(caught.value), name
        if name != "tensors do not match":
            assert "only safetensors files of format scv-sequential/1 are accepted" in str(caught.value)
