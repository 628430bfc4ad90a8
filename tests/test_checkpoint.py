"""Checkpoints: a run resumed from any step boundary ends bit-identical to the uninterrupted run."""

from dataclasses import replace

import pytest
import torch

from models import TrainConfig, resolve_layers, seeded_model, train
from models.checkpoint import Checkpoint, CheckpointError
from tests.support.stripes import TEST, TRAIN

LAYERS = [{"type": "Conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
          {"type": "ReLU"}, {"type": "Dropout2d", "p": 0.2}, {"type": "MaxPool2d", "kernel_size": 2},
          {"type": "Flatten"}, {"type": "Linear", "out_features": 16}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.3}]
CONFIG = TrainConfig(epochs=3, batch_size=40, learning_rate=0.01, seed=3, checkpoint_every_s=0.0)


def run(config: TrainConfig, resume: Checkpoint | None = None) -> tuple[torch.nn.Sequential, dict, list[Checkpoint]]:
    saved: list[Checkpoint] = []
    model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 12, 12), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=[0.2], std=[0.3], config=config, resume=resume, on_checkpoint=saved.append)
    return model, result, saved


@pytest.mark.parametrize("config", [
    CONFIG,
    replace(CONFIG, precision="bf16"),
    replace(CONFIG, optimizer="sgd", momentum=0.9),
    replace(CONFIG, optimizer="adamw", weight_decay=0.01),
], ids=["adam-fp32", "adam-bf16", "sgd-momentum", "adamw"])
def test_resuming_from_every_checkpoint_gives_the_uninterrupted_weights(config):
    model, result, checkpoints = run(config)
    steps = -(-len(TRAIN[1]) // config.batch_size)
    positions = [(c.epoch, c.step) for c in checkpoints]
    assert (2, 0) in positions and (3, 0) in positions and (1, steps // 2) in positions  # epoch ends and mid-epoch
    assert (1, steps) not in positions and (4, 0) not in positions  # never at an epoch's last step, nor at the end
    want = model.state_dict()
    for checkpoint in checkpoints[:: max(1, len(checkpoints) // 6)] + [checkpoints[-1]]:
        again, resumed, _ = run(config, resume=Checkpoint.from_bytes(checkpoint.to_bytes()))
        got = again.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), (checkpoint.epoch, checkpoint.step)
        assert resumed == result  # metrics and the whole history


def test_a_checkpoint_records_how_the_run_was_set_up():
    _, _, checkpoints = run(replace(CONFIG, epochs=2))
    setup = checkpoints[-1].meta["setup"]
    assert setup == {"device": "cpu", "precision": "fp32", "threads": torch.get_num_threads()}


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a checkpoint",
                                    lambda b: b[:9] + b"!" + b[10:]])  # the header JSON broken
def test_damaged_checkpoint_bytes_are_refused(damage):
    _, _, checkpoints = run(replace(CONFIG, epochs=2))
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(damage(checkpoints[-1].to_bytes()))
