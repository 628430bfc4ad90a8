"""The recipe fields in the training loop: augmentation, schedules, label smoothing, the validation split, early
stopping, and resuming a run that uses them all."""

from dataclasses import replace

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from models import Augment, EarlyStoppingConfig, TrainConfig, resolve_layers, seeded_model, train
from models import augment as augmenting
from models.checkpoint import Checkpoint
from models.optimizer import cosine_factor, scheduler
from models.splits import validation_split
from models.stopping import EarlyStopping
from tests.support.stripes import TEST, TRAIN

LAYERS = [{"type": "Conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
          {"type": "ReLU"}, {"type": "Dropout2d", "p": 0.2}, {"type": "MaxPool2d", "kernel_size": 2},
          {"type": "Flatten"}, {"type": "Linear", "out_features": 16}, {"type": "ReLU"}]
PLAIN = TrainConfig(epochs=3, batch_size=40, learning_rate=0.01, seed=3, checkpoint_every_s=0.0)
RECIPE = replace(PLAIN, augment=Augment(shift=2, flip=True, cutout=4), schedule="onecycle", label_smoothing=0.1,
                 validation_split=0.25, early_stopping=EarlyStoppingConfig("val_loss", patience=2, restore_best=True))


def run(config: TrainConfig, resume: Checkpoint | None = None) -> tuple[torch.nn.Sequential, dict, list[Checkpoint]]:
    saved: list[Checkpoint] = []
    model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 12, 12), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=[0.2], std=[0.3], config=config, resume=resume, on_checkpoint=saved.append)
    return model, result, saved


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- augmentation ------------------------------------------------------------------------------------------------


def test_shift_flip_and_cutout_move_the_pixels_as_drawn():
    image = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    images = image.expand(3, 1, 6, 6)
    draws = {"dy": torch.tensor([1, 0, -2]), "dx": torch.tensor([0, -1, 0]), "flip": torch.tensor([False, True, False])}
    out, erased = augmenting.apply(images, draws, cutout=0)
    assert erased is None
    assert torch.equal(out[0, 0], torch.cat([image[0, 0, :1], image[0, 0, :5]]))  # down 1, the top row repeated
    flipped = image[0, 0].flip(1)
    assert torch.equal(out[1, 0], torch.cat([flipped[:, 1:], flipped[:, 5:]], dim=1))  # flipped, then left 1
    assert torch.equal(out[2, 0], torch.cat([image[0, 0, 2:], image[0, 0, 5:], image[0, 0, 5:]]))  # up 2
    _, erased = augmenting.apply(images, {"cy": torch.tensor([0, 3, 5]), "cx": torch.tensor([0, 3, 2])}, cutout=2)
    assert erased.shape == (3, 1, 6, 6) and erased.sum((1, 2, 3)).tolist() == [1, 4, 4]  # clipped at an edge
    assert erased[1, 0, 2:4, 2:4].all() and erased[2, 0, 4:6, 1:3].all()


def test_each_epoch_draws_anew_per_sample_from_the_seed():
    recipe = Augment(shift=3, flip=True, cutout=4)
    first = augmenting.generator(5, torch.device("cpu"))
    epoch1 = augmenting.draw(recipe, n=256, height=12, width=12, generator=first)
    epoch2 = augmenting.draw(recipe, n=256, height=12, width=12, generator=first)
    again = augmenting.draw(recipe, n=256, height=12, width=12, generator=augmenting.generator(5, torch.device("cpu")))
    assert all(torch.equal(epoch1[k], again[k]) for k in epoch1)
    assert not torch.equal(epoch1["dx"], epoch2["dx"]) and not torch.equal(epoch1["flip"], epoch2["flip"])
    assert set(epoch1["dy"].tolist()) == set(range(-3, 4)) and 0.4 < epoch1["flip"].float().mean() < 0.6
    images, _ = augmenting.apply(TRAIN[0], epoch1, cutout=4)
    changed = (images != TRAIN[0]).flatten(1).any(1).float().mean()
    assert changed > 0.8  # most images differ from their originals (the rest drew no shift and no flip)


def test_augmented_training_is_deterministic_per_seed_and_differs_from_plain():
    config = replace(PLAIN, augment=Augment(shift=2, flip=True))
    model, result, _ = run(config)
    again, repeated, _ = run(config)
    other, _, _ = run(replace(config, seed=4))
    plain, _, _ = run(PLAIN)
    assert same_weights(model, again) and repeated == result
    assert not same_weights(model, other) and not same_weights(model, plain)
    assert result["metrics"]["test_accuracy"] >= 0.9  # the stripes survive a shift of 2 and a flip


# -- schedules ---------------------------------------------------------------------------------------------------


def test_the_one_cycle_learning_rate_at_each_step_is_one_cycle_lrs():
    config = replace(PLAIN, schedule="onecycle")
    _, _, checkpoints = run(config)  # one after every step: each records the learning rate of the next one
    steps = -(-len(TRAIN[1]) // config.batch_size)
    reference = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    expected = OneCycleLR(reference, max_lr=config.learning_rate, total_steps=3 * steps, cycle_momentum=False)
    rates = [reference.param_groups[0]["lr"]]
    for _ in range(3 * steps - 1):
        reference.step()
        expected.step()
        rates.append(reference.param_groups[0]["lr"])
    seen = {(c.epoch - 1) * steps + c.step: c.meta["param_groups"][0]["lr"] for c in checkpoints}
    assert len(seen) == 3 * steps - 1  # every step but the last is followed by a checkpoint
    assert all(seen[done] == rates[done] for done in seen)
    assert max(rates) == pytest.approx(config.learning_rate, rel=0.01)  # the peak, as near as the steps fall
    assert rates[0] == pytest.approx(config.learning_rate / 25) and rates[-1] < config.learning_rate / 1000


def test_cosine_warms_up_linearly_to_the_peak_then_decays():
    assert [cosine_factor(t, total=10, warmup=4) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_factor(4, total=10, warmup=4) == 1.0 and cosine_factor(7, total=10, warmup=4) == pytest.approx(0.5)
    factors = [cosine_factor(t, total=10, warmup=4) for t in range(4, 10)]
    assert factors == sorted(factors, reverse=True) and factors[-1] > 0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    schedule = scheduler(optimizer, schedule="cosine", total_steps=10, steps_per_epoch=4, warmup_epochs=0.5)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == pytest.approx([0.1, 0.2, 0.2])  # half an epoch of 4 steps: a warmup of 2
    assert rates[2:] == sorted(rates[2:], reverse=True)
    assert scheduler(optimizer, schedule="constant", total_steps=10, steps_per_epoch=4) is None


def test_label_smoothing_is_the_losss_own():
    _, smoothed, _ = run(replace(PLAIN, epochs=1, label_smoothing=0.2))
    _, plain, _ = run(replace(PLAIN, epochs=1))
    assert smoothed["history"][0]["train_loss"] > plain["history"][0]["train_loss"]  # a floor above 0 to reach


# -- the validation split ----------------------------------------------------------------------------------------


def test_the_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 7 + [3] * 1)[torch.randperm(68)]
    keep, held = validation_split(labels, fraction=0.25, seed=1)
    assert sorted(keep.tolist() + held.tolist()) == list(range(68))  # disjoint, together the whole split
    assert [(labels[held] == c).sum().item() for c in range(4)] == [10, 5, 2, 0]  # ¼ of each class, halves down
    again, held_again = validation_split(labels, fraction=0.25, seed=1)
    _, other = validation_split(labels, fraction=0.25, seed=2)
    assert torch.equal(held, held_again) and torch.equal(keep, again) and not torch.equal(held, other)
    with pytest.raises(ValueError, match="holds out none"):
        validation_split(torch.tensor([0, 1, 2]), fraction=0.1, seed=0)


def test_a_validation_split_adds_val_metrics_and_trains_on_the_rest():
    _, result, _ = run(replace(PLAIN, validation_split=0.25))
    assert all({"val_loss", "val_accuracy"} <= entry.keys() for entry in result["history"])
    assert result["metrics"]["val_accuracy"] >= 0.9
    assert result["stopped_early"] is None
    with pytest.raises(ValueError, match="needs a validation_split"):
        run(replace(PLAIN, early_stopping=EarlyStoppingConfig("val_accuracy")))


# -- early stopping ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "values", "patience", "stop_after"), [
    ("val_loss", [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.71, 0.72, 0.6], 3, 8),  # best at 5; 6, 7, 8 are not
    ("val_loss", [1.0, 0.8, 0.8, 0.7], 1, 3),  # equal is no improvement
    ("test_accuracy", [0.5, 0.6, 0.6, 0.7, 0.65, 0.7], 2, 6),
    ("val_accuracy", [0.5, 0.6, 0.7, 0.8], 1, None),
])
def test_early_stopping_stops_after_patience_epochs_without_improvement(metric, values, patience, stop_after):
    judge = EarlyStopping(EarlyStoppingConfig(metric, patience=patience))
    stopped = None
    for epoch, value in enumerate(values, 1):
        judge.judge({"epoch": epoch, metric: value})
        if judge.stop:
            stopped = epoch
            break
    assert stopped == stop_after
    replayed = EarlyStopping(judge.config)
    replayed.replay([{"epoch": e, metric: v} for e, v in enumerate(values[: stopped or len(values)], 1)])
    assert (replayed.best, replayed.best_epoch, replayed.stale) == (judge.best, judge.best_epoch, judge.stale)


def test_a_run_stops_at_the_right_epoch_and_restores_its_best_weights():
    # the stripes are learnt in an epoch or two: test accuracy then stays at its best and stops improving
    stopping = EarlyStoppingConfig("test_accuracy", patience=2, restore_best=True)
    model, result, _ = run(replace(PLAIN, epochs=12, early_stopping=stopping))
    history = result["history"]
    best = max(range(len(history)), key=lambda i: (history[i]["test_accuracy"], -i))  # the first of the best
    assert result["stopped_early"]["epoch"] == len(history) == best + 1 + 2 < 12
    assert "test_accuracy did not improve for 2 epochs" in result["stopped_early"]["reason"]
    assert result["metrics"] == {k: v for k, v in history[best].items() if k != "epoch"}
    full, unstopped, _ = run(replace(PLAIN, epochs=len(history)))
    assert unstopped["history"] == history  # stopping judges the run; it does not change it
    at_best, _, _ = run(replace(PLAIN, epochs=best + 1))
    assert same_weights(model, at_best) and not same_weights(model, full)
    last, kept, _ = run(replace(PLAIN, epochs=12, early_stopping=replace(stopping, restore_best=False)))
    assert same_weights(last, full) and kept["metrics"] == unstopped["metrics"]


# -- resume ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    RECIPE,
    replace(RECIPE, schedule="cosine", warmup_epochs=0.5, early_stopping=None, validation_split=0.0),
], ids=["augment-onecycle-validation-restore-best", "cosine-warmup"])
def test_a_recipe_run_resumed_from_any_checkpoint_gives_the_uninterrupted_weights(config):
    model, result, checkpoints = run(replace(config, epochs=4))
    assert len(checkpoints) > 8
    for checkpoint in checkpoints[:: max(1, len(checkpoints) // 5)] + [checkpoints[-1]]:
        again, resumed, _ = run(replace(config, epochs=4), resume=Checkpoint.from_bytes(checkpoint.to_bytes()))
        assert same_weights(again, model), (checkpoint.epoch, checkpoint.step)
        assert resumed == result
