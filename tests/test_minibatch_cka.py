"""Minibatch CKA over a split, checked against a float64 reference written here from the formulas."""

import re

import pytest
import torch
from torch import nn

from app.analysis.maths import AnalysisInputError
from app.analysis.minibatch import forward_chunk, layer_widths, minibatch_cka
from tests.support.reference import reference

BATCH = 64
IMAGES = 4 * BATCH + 3  # four whole batches, then 3 images: too few for the unbiased HSIC, so dropped
NORM = {"mean": [0.25], "std": [0.5]}
OTHER_NORM = {"mean": [0.1307], "std": [0.3081]}
LARGE, SMALL = 1024**3, 2 * 1024**2


def tiny_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 14 * 14, 10),
    ).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # Blobs on noise, so that layers share structure and CKA is neither 0 nor 1 everywhere.
    gen = torch.Generator().manual_seed(7)
    noise = torch.rand(IMAGES, 1, 28, 28, generator=gen) * 80
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = torch.rand(IMAGES, 2, 1, 1, generator=gen) * 28
    blob = 175 * torch.exp(-((ys - centres[:, 0]) ** 2 + (xs - centres[:, 1]) ** 2) / 30)
    return (noise + blob.unsqueeze(1)).clamp(0, 255).to(torch.uint8)


# -- the service against it --------------------------------------------------------------------------------


def test_minibatch_cka_equals_the_reference(images):
    model = tiny_cnn(0)
    result = minibatch_cka(images, model, normalization=NORM, batch_size=BATCH, max_bytes=LARGE)
    assert result["n"] == 4 * BATCH and result["batches"] == 4 and result["estimator"] == "debiased"
    assert result["layers"] == [f"{i}:{type(m).__name__}" for i, m in enumerate(model)]
    expected = reference(images, [(model, NORM)], BATCH)
    assert torch.tensor(result["matrix"], dtype=torch.float64) == pytest.approx(expected, abs=1e-6)
    assert 0.05 < expected.min() and expected[0, -1] < 0.95  # the data leave room for a wrong answer


def test_minibatch_cka_against_another_model_equals_the_reference(images):
    model, other = tiny_cnn(0), tiny_cnn(1)
    result = minibatch_cka(images, model, normalization=NORM, against=other, against_normalization=OTHER_NORM,
                           batch_size=BATCH, max_bytes=LARGE)
    rows = len(model)
    expected = reference(images, [(model, NORM), (other, OTHER_NORM)], BATCH)[:rows, rows:]
    assert result["other_layers"] == result["layers"]
    assert torch.tensor(result["matrix"], dtype=torch.float64) == pytest.approx(expected, abs=1e-6)
    for bound in ("low", "high"):
        assert torch.tensor(result["ci"][bound]).shape == (rows, rows)


def test_a_kept_short_last_batch_counts_as_one_batch(images):
    model, count = tiny_cnn(0), 3 * BATCH + 20
    result = minibatch_cka(images[:count], model, normalization=NORM, batch_size=BATCH, max_bytes=LARGE)
    assert result["n"] == count and result["batches"] == 4
    expected = reference(images[:count], [(model, NORM)], BATCH)
    assert torch.tensor(result["matrix"], dtype=torch.float64) == pytest.approx(expected, abs=1e-6)


def test_the_interval_holds_the_estimate_and_repeats(images):
    model = tiny_cnn(0)
    first = minibatch_cka(images, model, normalization=NORM, batch_size=BATCH, max_bytes=LARGE)
    again = minibatch_cka(images, model, normalization=NORM, batch_size=BATCH, max_bytes=LARGE)
    assert first == again
    matrix, low, high = (torch.tensor(m) for m in (first["matrix"], first["ci"]["low"], first["ci"]["high"]))
    assert first["ci"]["level"] == 0.95
    assert (low <= matrix).all() and (matrix <= high).all()
    assert (low < high).any()  # four batches differ, so the interval has a width somewhere


def test_a_small_budget_chunks_the_batches_without_changing_the_answer(images):
    model, other, count = tiny_cnn(0), tiny_cnn(1), 3 * BATCH + 20  # and a short last batch, kept
    widths = layer_widths(model, torch.zeros(1, 1, 28, 28)) + layer_widths(other, torch.zeros(1, 1, 28, 28))
    assert 1 < forward_chunk(widths, batch_size=BATCH, batches=4, max_bytes=SMALL) <= BATCH // 4
    assert forward_chunk(widths, batch_size=BATCH, batches=4, max_bytes=LARGE) == BATCH
    large, small = (
        minibatch_cka(images[:count], model, normalization=NORM, against=other, against_normalization=OTHER_NORM,
                      batch_size=BATCH, max_bytes=budget)
        for budget in (LARGE, SMALL)
    )
    for answer in ("matrix", "low", "high"):
        got, want = (r["ci"][answer] if answer in r["ci"] else r[answer] for r in (small, large))
        # The Gram products run in float32 (after the shift to the first image), summed in another order in
        # chunks than in one product: either matrix is within 1e-7 of the float64 reference, and a bootstrap
        # bound (a resample of few batches) moves by up to ~2e-7; inside the 1e-6 the reference tests allow.
        assert torch.tensor(got, dtype=torch.float64) == pytest.approx(torch.tensor(want, dtype=torch.float64),
                                                                       abs=5e-7)


def test_one_image_over_the_budget_names_the_layer_and_the_bytes(images):
    budget = 40_000
    with pytest.raises(AnalysisInputError) as caught:
        minibatch_cka(images, tiny_cnn(0), normalization=NORM, batch_size=BATCH, max_bytes=budget)
    found = re.search(r"layer (\d+:\w+): one image needs ([\d,]+) bytes", str(caught.value))
    assert found and found[1] in [f"{i}:{type(m).__name__}" for i, m in enumerate(tiny_cnn(0))]
    assert int(found[2].replace(",", "")) > budget


def test_a_batch_size_whose_grams_overflow_the_budget_is_refused(images):
    with pytest.raises(AnalysisInputError) as caught:
        minibatch_cka(images, tiny_cnn(0), normalization=NORM, batch_size=len(images), max_bytes=SMALL)
    assert caught.value.field == "batch_size" and "bytes" in str(caught.value)


@pytest.mark.parametrize(
    ("estimator", "batch_size", "field"), [("linear", BATCH, "estimator"), ("debiased", 3, "batch_size")]
)
def test_the_linear_estimator_and_batches_under_four_are_refused(images, estimator, batch_size, field):
    with pytest.raises(AnalysisInputError) as caught:
        minibatch_cka(images, tiny_cnn(0), normalization=NORM, estimator=estimator, batch_size=batch_size,
                      max_bytes=LARGE)
    assert caught.value.field == field


def test_a_layer_without_variance_scores_zero_not_nan(images):
    model = tiny_cnn(0)
    with torch.no_grad():
        model[-1].weight.zero_()  # every image now gets the bias alone
        model[-1].bias.uniform_(1, 2)
    result = minibatch_cka(images, model, normalization=NORM, batch_size=BATCH, max_bytes=LARGE)
    matrix = torch.tensor(result["matrix"])
    assert (matrix[-1] == 0).all() and (matrix[:, -1] == 0).all()
    assert matrix[:-1, :-1] == pytest.approx(reference(images, [(model, NORM)], BATCH)[:-1, :-1], abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_answer_is_the_cpu_one(images):
    model, other = tiny_cnn(0), tiny_cnn(1)
    cpu = minibatch_cka(images, model, normalization=NORM, against=other, batch_size=BATCH, max_bytes=LARGE)
    gpu = minibatch_cka(images, model.cuda(), normalization=NORM, against=other.cuda(), batch_size=BATCH,
                        max_bytes=SMALL)  # chunked: earlier chunks go through the spill file and back
    assert torch.tensor(gpu["matrix"]) == pytest.approx(torch.tensor(cpu["matrix"]), abs=1e-6)
