"""Training precision: auto picks bf16 only where the device has it, and bf16 learns as well as fp32, repeatably."""

from dataclasses import replace

import pytest
import torch

import models
from models import TrainConfig, resolve_layers, resolve_precision, seeded_model, train
from tests.support.stripes import TEST, TRAIN

LAYERS = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
          {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"},
          {"type": "Linear", "out_features": 16}, {"type": "ReLU"}]
CONFIG = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01, seed=0)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def run(precision: str, device: str = "cpu") -> tuple[torch.nn.Sequential, dict]:
    config = replace(CONFIG, precision=precision, device=device)
    model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 12, 12), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=[0.2], std=[0.3], config=config)
    return model, result


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_learns_as_well_as_fp32_and_each_repeats_bit_for_bit(device: str) -> None:
    trained = {precision: [run(precision, device) for _ in range(2)] for precision in ("fp32", "bf16")}
    for (first, _), (second, _) in trained.values():
        weights, again = first.state_dict(), second.state_dict()
        assert all(torch.equal(weights[key], again[key]) for key in weights)
        assert all(p.dtype == torch.float32 for p in first.parameters())  # only the arithmetic is bf16
    fp32, bf16 = (trained[precision][0] for precision in ("fp32", "bf16"))
    assert fp32[1]["metrics"]["test_accuracy"] >= 0.95
    assert abs(fp32[1]["metrics"]["test_accuracy"] - bf16[1]["metrics"]["test_accuracy"]) <= 0.005
    # autocast really ran: bf16 arithmetic leads to other float32 weights
    assert not torch.equal(fp32[0].state_dict()["0.weight"], bf16[0].state_dict()["0.weight"])


def test_evaluation_takes_the_same_fast_path() -> None:
    model, result = run("bf16")
    loss, accuracy = models.evaluate(model, *TEST, mean=[0.2], std=[0.3], device="cpu", precision="bf16")
    assert (loss, accuracy) == (result["metrics"]["test_loss"], result["metrics"]["test_accuracy"])
    model.to(memory_format=models.memory_format(model))
    outputs = models.logits(model, TEST[0], mean=[0.2], std=[0.3], device="cpu", precision="bf16", batch_size=64)
    plain = models.logits(model.to(memory_format=torch.contiguous_format), TEST[0], mean=[0.2], std=[0.3],
                          device="cpu", precision="fp32")
    assert outputs.dtype == torch.float32 and outputs.shape == (200, 4)
    assert torch.equal(outputs.argmax(1), plain.argmax(1))
    assert torch.allclose(outputs, plain, atol=0.1, rtol=0.05)  # bf16 keeps about three significant digits


def test_auto_is_bf16_only_where_the_cpu_has_it() -> None:
    assert not models.cpu_has_bf16(False)  # SCV_CPU_BF16=0, as on a CPU without AVX512-BF16 or AMX
    assert resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    # asked for explicitly: slower without support, still right
    assert resolve_precision("bf16", "cpu", cpu_bf16=False) == "bf16"
    assert resolve_precision("auto", torch.device("cpu"), cpu_bf16=True) == "bf16"
    assert resolve_precision("fp32", "cpu", cpu_bf16=True) == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if models.cpu_has_bf16() else "fp32")  # unset: the flags


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch: pytest.MonkeyPatch, capability: tuple,
                                                     expected: str) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    assert resolve_precision("auto", "cuda:1") == expected
    assert asked == [torch.device("cuda:1")]


def test_unknown_or_unresolved_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="resolve_precision"):
        run("auto")


def test_channels_last_only_for_networks_with_convolutions() -> None:
    conv = seeded_model(resolve_layers(LAYERS, input_shape=(1, 12, 12), num_classes=4), seed=0)
    mlp = seeded_model(resolve_layers([{"type": "Flatten"}, {"type": "Linear", "out_features": 8}],
                                      input_shape=(1, 12, 12), num_classes=4), seed=0)
    assert models.memory_format(conv) == torch.channels_last
    assert models.memory_format(mlp) == torch.contiguous_format
