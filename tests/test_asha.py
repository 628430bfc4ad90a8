"""ASHA's decision function against hand-worked cases (rungs, the reduction factor, ties, out-of-order arrival), and
the training loop's `judge` that carries its decisions into a trial."""

import itertools
import math
from dataclasses import replace

import pytest
import torch

from app.sweeps.asha import CONTINUE, STOP, decide, kept, rungs
from models import TrainConfig, resolve_layers, seeded_model, train
from tests.support.stripes import TEST, TRAIN


@pytest.mark.parametrize(("min_epochs", "eta", "epochs", "expected"), [
    (1, 3, 9, [1, 3]),  # epoch 9 is the trial's last: nothing is saved by judging there
    (1, 3, 10, [1, 3, 9]),
    (2, 2, 16, [2, 4, 8]),
    (1, 4, 4, [1]),
    (5, 3, 5, []),  # too short for any rung
    (3, 3, 1, []),
])
def test_rungs_lie_at_min_epochs_times_eta_to_the_k_below_the_last_epoch(min_epochs, eta, epochs, expected):
    assert rungs(min_epochs=min_epochs, reduction_factor=eta, epochs=epochs) == expected


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        rungs(min_epochs=0, reduction_factor=3, epochs=9)
    with pytest.raises(ValueError):
        rungs(min_epochs=1, reduction_factor=1, epochs=9)


@pytest.mark.parametrize(("n", "eta", "expected"), [(1, 3, 1), (2, 3, 1), (3, 3, 1), (5, 3, 1), (6, 3, 2),
                                                     (9, 3, 3), (4, 2, 2), (7, 2, 3)])
def test_the_top_one_over_eta_goes_on_and_at_least_one(n, eta, expected):
    assert kept(n, eta) == expected


def _arrive(arrivals, *, eta=3, higher=True):
    """Feed (trial, metric) pairs in arrival order, as a rung of the catalog would; returns each decision."""
    reached, decisions = {}, {}
    for trial, metric in arrivals:
        decisions[trial] = decide(trial=trial, metric=metric, reached=reached, reduction_factor=eta,
                                  higher_is_better=higher)
        reached[trial] = metric
    return decisions


def test_a_worked_rung_with_eta_3():
    # t1 alone: goes on. t2 (n=2, keep 1) is below t1: stops. t3 (n=3, keep 1) is the best: goes on.
    # t4 (n=4, keep 1) is second: stops. t5 is last: stops. t6 (n=6, keep 2) is second of six: goes on.
    decisions = _arrive([(1, 0.5), (2, 0.4), (3, 0.6), (4, 0.55), (5, 0.3), (6, 0.58)])
    assert decisions == {1: CONTINUE, 2: STOP, 3: CONTINUE, 4: STOP, 5: STOP, 6: CONTINUE}


def test_losses_rank_lower_first():
    decisions = _arrive([(1, 0.5), (2, 0.4), (3, 0.6)], higher=False)
    assert decisions == {1: CONTINUE, 2: CONTINUE, 3: STOP}


def test_eta_2_keeps_half():
    decisions = _arrive([(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.15)], eta=2)
    # t2: n=2 keep 1, best. t3: n=3 keep 1, best. t4: n=4 keep 2, third (0.3, 0.2, 0.15, 0.1).
    assert decisions == {1: CONTINUE, 2: CONTINUE, 3: CONTINUE, 4: STOP}


def test_ties_go_to_the_lower_trial_number_whatever_the_arrival_order():
    assert _arrive([(1, 0.9), (2, 0.9)]) == {1: CONTINUE, 2: STOP}
    # trial 2 came first and went on alone; trial 1, arriving later with the same metric, outranks it
    assert _arrive([(2, 0.9), (1, 0.9)]) == {2: CONTINUE, 1: CONTINUE}
    assert decide(trial=7, metric=1.0, reached={3: 1.0, 5: 1.0}, reduction_factor=3) == STOP
    assert decide(trial=3, metric=1.0, reached={5: 1.0, 7: 1.0}, reduction_factor=3) == CONTINUE


def test_a_decision_depends_on_who_reached_the_rung_not_on_the_order_they_came_in():
    earlier = {1: 0.2, 4: 0.7, 6: 0.5, 8: 0.9, 9: 0.1}
    for order in itertools.permutations(earlier):
        reached = {trial: earlier[trial] for trial in order}
        assert decide(trial=3, metric=0.8, reached=reached, reduction_factor=3) == CONTINUE  # second of 6, keep 2
        assert decide(trial=3, metric=0.6, reached=reached, reduction_factor=3) == STOP  # third of 6


def test_trials_arriving_out_of_numbered_order_are_judged_on_what_has_arrived():
    # trial 9 reaches the rung first, then 5, then 1: each is judged only against those before it
    assert _arrive([(9, 0.3), (5, 0.6), (1, 0.5)]) == {9: CONTINUE, 5: CONTINUE, 1: STOP}


def test_a_missing_or_nan_metric_ranks_last():
    assert decide(trial=2, metric=math.nan, reached={1: 0.0}, reduction_factor=3) == STOP
    assert decide(trial=2, metric=0.0, reached={1: None}, reduction_factor=3) == CONTINUE
    assert decide(trial=1, metric=None, reached={}, reduction_factor=3) == CONTINUE  # alone: still the best


# -- the training loop's judge (what a trial of an ASHA sweep runs with) -------------------------------------------

LAYERS = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]
CONFIG = TrainConfig(epochs=4, batch_size=40, learning_rate=0.01, seed=3, checkpoint_every_s=3600.0)


def _train(config, *, judge=None, resume=None):
    seen, weights, saved = [], [], []

    def judging(entry):
        seen.append(entry["epoch"])
        return judge(entry) if judge else None

    model = seeded_model(resolve_layers(LAYERS, input_shape=(1, 12, 12), num_classes=4), seed=config.seed)
    result = train(model, train_images=TRAIN[0], train_labels=TRAIN[1], test_images=TEST[0], test_labels=TEST[1],
                   mean=[0.2], std=[0.3], config=config, resume=resume, on_checkpoint=saved.append,
                   on_weights=lambda epoch, _m, _e, last: weights.append((epoch, last)), judge=judging)
    return model, result, {"judged": seen, "weights": weights, "checkpoints": saved}


def _stop_at_2(entry):
    return "ASHA stopped it at rung 1 (epoch 2)" if entry["epoch"] == 2 else None


def test_a_judge_ends_the_run_at_the_epoch_it_says_with_that_epochs_weights():
    model, result, seen = _train(CONFIG, judge=_stop_at_2)
    assert seen["judged"] == [1, 2] and len(result["history"]) == 2
    assert result["stopped_early"] == {"epoch": 2, "reason": "ASHA stopped it at rung 1 (epoch 2)"}
    assert seen["weights"] == [(0, False), (1, False), (2, True)]  # epoch 2 is the run's last
    shorter, plain, _ = _train(replace(CONFIG, epochs=2))
    assert plain["stopped_early"] is None and plain["history"] == result["history"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shorter.state_dict().values(),
                                                  strict=True))


def test_a_run_resumed_after_its_judge_stopped_it_asks_again_and_ends_there():
    _, _, seen = _train(CONFIG, judge=_stop_at_2)
    after_epoch_2 = [c for c in seen["checkpoints"] if c.epoch == 3 and c.step == 0]
    _, resumed, again = _train(CONFIG, judge=_stop_at_2, resume=after_epoch_2[0])
    assert again["judged"] == [2] and again["weights"] == []  # asked about epoch 2 again; trained nothing more
    assert resumed["stopped_early"]["epoch"] == 2 and len(resumed["history"]) == 2
