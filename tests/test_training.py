"""The training loop on a tiny learnable problem: accuracy, progress reports, stopping, determinism."""

import warnings
from dataclasses import replace

import pytest
import torch

from models import TrainConfig, evaluate, normalize, pick_device, resolve_layers, seeded_model, train

LAYERS = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
          {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"},
          {"type": "Linear", "out_features": 16}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.1}]
CONFIG = TrainConfig(epochs=3, batch_size=32, learning_rate=0.01, seed=0)


def quadrants(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 1×8×8 images whose label (0..3) is the quadrant that is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randint(0, 90, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 150
    return images, labels


TRAIN, TEST = quadrants(200, seed=1), quadrants(100, seed=2)
MEAN, STD = [TRAIN[0].float().mean().item() / 255], [TRAIN[0].float().std().item() / 255]


def run(config: TrainConfig = CONFIG, **kwargs: object) -> tuple[torch.nn.Sequential, dict]:
    model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 8, 8), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=MEAN, std=STD, config=config, **kwargs)
    return model, result


def test_learns_the_quadrant_problem() -> None:
    model, result = run()
    assert result["metrics"]["test_accuracy"] >= 0.95
    assert result["metrics"] == {k: v for k, v in result["history"][-1].items() if k != "epoch"}
    assert [entry["epoch"] for entry in result["history"]] == [1, 2, 3]
    assert next(model.parameters()).device.type == "cpu"
    assert all(p.is_contiguous() for p in model.parameters())  # trained channels_last, handed back plain
    loss, accuracy = evaluate(model, *TEST, mean=MEAN, std=STD, device="cpu", batch_size=7)
    assert (loss, accuracy) == pytest.approx((result["metrics"]["test_loss"], result["metrics"]["test_accuracy"]))


def test_progress_reports_every_step_and_epoch() -> None:
    reports: list[dict] = []
    _, result = run(replace(CONFIG, progress_every_s=0), on_progress=reports.append)
    steps = reports[0]["steps"]
    assert steps == 7  # 200 images in batches of 32
    per_step = [r for r in reports if "epoch_done" not in r]
    done = [r["epoch_done"] for r in reports if "epoch_done" in r]
    assert len(per_step) == 3 * steps and done == result["history"]
    assert [(r["epoch"], r["step"]) for r in per_step] == [(e, s) for e in (1, 2, 3) for s in range(1, steps + 1)]
    fractions = [r["fraction"] for r in per_step]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and reports[-1]["fraction"] == 1.0
    assert all(r["epochs"] == 3 and 0 <= r["train_accuracy"] <= 1 and r["train_loss"] > 0 for r in per_step)


def test_progress_is_read_back_on_the_first_and_each_last_step_between_intervals() -> None:
    reports: list[dict] = []
    _, result = run(replace(CONFIG, progress_every_s=1e9), on_progress=reports.append)
    per_step = [r for r in reports if "epoch_done" not in r]
    assert [(r["epoch"], r["step"]) for r in per_step] == [(1, 1), (1, 7), (2, 7), (3, 7)]
    # the sums stay on the device between reports, so an epoch's last report is its whole epoch
    assert [(r["train_loss"], r["train_accuracy"]) for r in per_step[1:]] == [
        (entry["train_loss"], entry["train_accuracy"]) for entry in result["history"]]
    assert [r["epoch_done"] for r in reports if "epoch_done" in r] == result["history"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_on_a_gpu_more_steps_cost_no_more_host_synchronisations() -> None:
    def syncs(images: int) -> int:
        config = replace(CONFIG, device="cuda", epochs=1, batch_size=8, progress_every_s=1e9)
        model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 8, 8), num_classes=4), seed=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(model, train_images=TRAIN[0][:images], train_labels=TRAIN[1][:images], test_images=TEST[0],
                      test_labels=TEST[1], mean=MEAN, std=STD, config=config, on_progress=lambda report: None)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(warning.message) for warning in caught)

    syncs(100)  # first use: CUDA and cuDNN set themselves up, which may synchronise
    assert syncs(200) == syncs(100) > 0  # 25 steps or 13: the same reports, evaluation and copy back


def test_an_exception_from_on_progress_stops_training() -> None:
    calls: list[int] = []

    def stop(report: dict) -> None:
        calls.append(report["step"])
        if len(calls) == 3:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        model, _ = run(replace(CONFIG, progress_every_s=0), on_progress=stop)
    assert calls == [1, 2, 3]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first, second = run()[0].state_dict(), run()[0].state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = run(replace(CONFIG, seed=1))[0].state_dict()
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers_learn(optimizer: str) -> None:
    config = replace(CONFIG, optimizer=optimizer, learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
    assert run(config)[1]["metrics"]["test_accuracy"] >= 0.9


def test_a_lone_last_sample_is_skipped_for_batchnorm() -> None:
    reports: list[dict] = []
    config = replace(CONFIG, epochs=1, batch_size=199)  # 200 = 199 + 1
    run(config, on_progress=reports.append)
    assert reports[0]["steps"] == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        run(replace(CONFIG, optimizer="lion"))
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")
    assert pick_device("auto") in ("cpu", "cuda")


def test_normalize_matches_the_documented_formula() -> None:
    batch = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    out = normalize(batch, torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.1]))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]))
