"""SCV_ANALYSIS_MAX_BYTES in the analyses: the answer does not depend on the budget, the memory does."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from app.analysis.maths import AnalysisInputError, activations, cka_matrix, top_images
from tests.support.analysis_memory import MiB, limit_cnn, peak_growth

BUDGET = 64 * MiB
# What the budget does not count: the interpreter's and the libraries' own growth while working, and freed
# activation blocks that glibc keeps rather than returns (measured 140-150 MiB in all for each analysis below).
SLACK = 300 * 1000 * 1000
needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")


def small_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 10)).eval()


@pytest.mark.parametrize("estimator", ["linear", "debiased"])
def test_cka_matrix_in_chunks_equals_the_one_pass_answer(estimator):
    model, other = small_cnn(0), small_cnn(1)
    x = torch.randn(40, 1, 12, 12, generator=torch.Generator().manual_seed(2)) + 3  # off the origin
    whole = cka_matrix(model, x, estimator=estimator, other=other, other_x=2 * x)
    # The 10 Grams take 166 KB and one sample 18 KB at its widest layer: 5 samples a chunk, and the spill file
    # read back in blocks of 460 features.
    chunked = cka_matrix(model, x, estimator=estimator, other=other, other_x=2 * x, max_bytes=240_000)
    assert chunked["layers"] == whole["layers"] and chunked["other_layers"] == whole["other_layers"]
    # float32 products summed in another order: a rounding apart
    torch.testing.assert_close(torch.tensor(chunked["matrix"]), torch.tensor(whole["matrix"]), rtol=0, atol=1e-6)
    assert cka_matrix(model, x, estimator=estimator, max_bytes=240_000)["matrix"][2][2] == pytest.approx(1.0)


def test_top_images_within_a_budget_rank_as_without_one():
    model = small_cnn(0)
    images = torch.randint(0, 256, (37, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    whole = top_images(model, images, mean=[0.5], std=[0.25], layer=1, channel=3, k=10)
    bounded = top_images(model, images, mean=[0.5], std=[0.25], layer=1, channel=3, k=10, max_bytes=30_000)
    assert bounded[0] == whole[0]
    torch.testing.assert_close(torch.tensor(bounded[1]), torch.tensor(whole[1]), rtol=0, atol=1e-6)


def test_one_sample_over_the_budget_is_refused_naming_the_layer_and_the_bytes():
    model, x = small_cnn(0), torch.randn(8, 1, 12, 12)
    images = torch.zeros(8, 1, 12, 12, dtype=torch.uint8)
    for call in (lambda: cka_matrix(model, x, max_bytes=4_000),
                 lambda: top_images(model, images, mean=[0.5], std=[0.25], layer=2, channel=0, k=1, max_bytes=4_000),
                 lambda: activations(model, x[:1], layer=2, max_bytes=4_000)):
        with pytest.raises(AnalysisInputError) as caught:
            call()
        found = re.search(r"layer (\d+:\w+): one image needs ([\d,]+) bytes", str(caught.value))
        assert found and found[1] in ("0:Conv2d", "1:ReLU"), str(caught.value)
        assert int(found[2].replace(",", "")) > 4_000 and "SCV_ANALYSIS_MAX_BYTES" in str(caught.value)
    assert activations(model, x[:1], layer=2, max_bytes=1_000_000).shape == (8, 6, 6)


def test_the_layer_limits_network_is_refused_below_one_image():
    x = torch.zeros(4, 1, 32, 32)
    with pytest.raises(AnalysisInputError, match=r"layer 0:Conv2d: one image needs [\d,]+ bytes"):
        cka_matrix(limit_cnn(), x, max_bytes=16 * MiB)


@needs_proc
def test_minibatch_cka_of_a_wide_network_stays_within_the_budget():
    growth, matrix = peak_growth("minibatch", count=1280, max_bytes=BUDGET)
    assert growth <= BUDGET + SLACK, f"grew {growth / MiB:.0f} MiB"
    assert torch.tensor(matrix).diagonal() == pytest.approx(torch.ones(4), abs=1e-9)  # an answer, not only memory
    assert 0.5 < min(min(row) for row in matrix)


@needs_proc
def test_top_images_of_a_wide_network_stay_within_the_budget():
    growth, indices = peak_growth("top_images", count=2000, max_bytes=BUDGET)
    assert growth <= BUDGET + SLACK, f"grew {growth / MiB:.0f} MiB"
    assert len(set(indices)) == 5 and all(0 <= i < 2000 for i in indices)


@needs_proc
@pytest.mark.slow  # 4 GB of spilled activations written and read back: a minute or more on 2 cores
def test_cka_matrix_at_the_layer_limits_stays_within_the_budget():
    growth, matrix = peak_growth("cka_matrix", count=260, max_bytes=BUDGET)  # 260: the largest CKA set
    assert growth <= BUDGET + SLACK, f"grew {growth / MiB:.0f} MiB"
    assert torch.tensor(matrix).diagonal() == pytest.approx(torch.ones(3), abs=1e-9)
