"""Reproducibility: a run says whether its weights repeat bit for bit; on CUDA, resuming keeps them identical."""

from dataclasses import replace

import pytest
import torch

from models import TrainConfig, resolve_layers, seeded_model, train
from models.checkpoint import Checkpoint

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
LAYERS = [{"type": "Conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
          {"type": "ReLU"}, {"type": "Dropout2d", "p": 0.2}, {"type": "MaxPool2d", "kernel_size": 2},
          {"type": "Flatten"}, {"type": "Linear", "out_features": 16}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.3}]
# AdaptiveAvgPool2d's CUDA backward adds into shared cells in whatever order the threads run
NO_DETERMINISTIC_CUDA_KERNEL = [{"type": "Conv2d", "out_channels": 6, "kernel_size": 3},
                                {"type": "AdaptiveAvgPool2d", "output_size": 3}, {"type": "Flatten"}]
CONFIG = TrainConfig(epochs=2, batch_size=40, learning_rate=0.01, seed=5, checkpoint_every_s=0.0)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 12, 12), generator=generator, dtype=torch.uint8),
            torch.randint(0, 4, (n,), generator=generator))


TRAIN, TEST = data(200, seed=1), data(64, seed=2)


def run(config: TrainConfig, layers: list[dict] = LAYERS, resume: Checkpoint | None = None):
    saved: list[Checkpoint] = []
    model = seeded_model(resolve_layers(layers, input_shape=(1, 12, 12), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=[0.5], std=[0.3], config=config, resume=resume, on_checkpoint=saved.append)
    return model, result, saved


@pytest.mark.parametrize("layers", [LAYERS, NO_DETERMINISTIC_CUDA_KERNEL], ids=["default-like", "adaptive-pool"])
def test_a_cpu_run_is_reproducible_and_says_so(layers):
    first, result, _ = run(CONFIG, layers)
    again, repeated, _ = run(CONFIG, layers)
    assert result["reproducible"] is True and result["nondeterministic"] == []
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    assert repeated == result


@CUDA
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_a_resumed_run_ends_bit_identical(precision, graphs):
    config = replace(CONFIG, device="cuda", precision=precision, cuda_graphs=graphs)
    model, result, checkpoints = run(config)
    assert result["reproducible"] is True, result["nondeterministic"]
    again, _, _ = run(config)
    want = model.state_dict()
    assert all(torch.equal(again.state_dict()[k], want[k]) for k in want)  # the same run twice
    for checkpoint in (checkpoints[len(checkpoints) // 3], checkpoints[-1]):  # mid-epoch and an epoch end
        resumed, resumed_result, _ = run(config, resume=Checkpoint.from_bytes(checkpoint.to_bytes()))
        assert all(torch.equal(resumed.state_dict()[k], want[k]) for k in want), (checkpoint.epoch, checkpoint.step)
        assert resumed_result["history"] == result["history"]


@CUDA
def test_on_cuda_an_op_without_a_deterministic_kernel_is_named_not_promised():
    _, result, _ = run(replace(CONFIG, device="cuda", epochs=1), NO_DETERMINISTIC_CUDA_KERNEL)
    assert result["reproducible"] is False
    assert any("adaptive_avg_pool2d" in op for op in result["nondeterministic"]), result["nondeterministic"]
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is given back


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_replayed_graphs_train_exactly_as_eager_steps(precision):
    config = replace(CONFIG, device="cuda", precision=precision, cuda_graphs=True)
    graphed, graphed_result, _ = run(config)
    eager, eager_result, _ = run(replace(config, cuda_graphs=False))
    want = eager.state_dict()
    assert all(torch.equal(graphed.state_dict()[k], want[k]) for k in want)
    assert graphed_result["history"] == eager_result["history"]
