"""Properties of CKA and the layer analyses, on small generated data and a tiny CNN."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from app.analysis.maths import AnalysisInputError, activations, cka, cka_matrix, top_images
from tests.support.layers import record_layers

FAST = settings(deadline=None, max_examples=25, database=None)
seeds = st.integers(0, 2**32 - 1)
ESTIMATORS = ["linear", "debiased"]


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def song_hsic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Unbiased HSIC exactly as written by Song et al. 2012, on uncentred Grams."""
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)  # noqa: E741
    ones = torch.ones(n, dtype=k.dtype)
    value = torch.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    return float((value - 2 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3)))


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    )
    return model.eval()


@FAST
@given(seed=seeds, n=st.integers(6, 40), d=st.integers(1, 30), estimator=st.sampled_from(ESTIMATORS))
def test_a_representation_is_identical_to_itself(seed, n, d, estimator):
    assert cka(randn(seed, n, d), randn(seed, n, d), estimator) == pytest.approx(1.0, abs=1e-9)


@FAST
@given(seed=seeds, n=st.integers(4, 40), dx=st.integers(1, 30), dy=st.integers(1, 30))
def test_cka_is_symmetric_and_linear_cka_lies_in_unit_interval(seed, n, dx, dy):
    x, y = randn(seed, n, dx), randn(seed + 1, n, dy)
    for estimator in ESTIMATORS:
        assert cka(x, y, estimator) == pytest.approx(cka(y, x, estimator), abs=1e-12)
    assert 0.0 <= cka(x, y) <= 1.0


@FAST
@given(
    seed=seeds,
    n=st.integers(6, 40),
    d=st.integers(1, 20),
    scale=st.floats(1e-3, 1e3),
    estimator=st.sampled_from(ESTIMATORS),
)
def test_cka_ignores_rotation_isotropic_scaling_and_translation(seed, n, d, scale, estimator):
    x, y = randn(seed, n, d), randn(seed + 1, n, 7)
    rotation, _ = torch.linalg.qr(randn(seed + 2, d, d))
    moved = scale * x @ rotation + randn(seed + 3, d)
    assert cka(moved, y, estimator) == pytest.approx(cka(x, y, estimator), abs=1e-8)


@FAST
@given(seed=seeds, d=st.integers(2, 10), extra=st.integers(4, 40))
def test_cka_notices_anisotropic_scaling(seed, d, extra):
    correlated = randn(seed, 2 * d + extra, d) @ (torch.eye(d, dtype=torch.float64) + 0.5)
    stretched = correlated * torch.logspace(0, 2, d, dtype=torch.float64)
    assert cka(correlated, stretched) < 1.0 - 1e-3


@FAST
@given(seed=seeds, n=st.integers(2, 40), dx=st.integers(1, 60), dy=st.integers(1, 60))
def test_gram_and_feature_forms_of_linear_cka_agree(seed, n, dx, dy):
    x, y = randn(seed, n, dx), randn(seed + 1, n, dy)
    assert cka(x, y, form="gram") == pytest.approx(cka(x, y, form="features"), abs=1e-8)


@FAST
@given(seed=seeds, n=st.integers(4, 30), dx=st.integers(1, 20), dy=st.integers(1, 20))
def test_cka_matches_the_textbook_formulas(seed, n, dx, dy):
    x, y = randn(seed, n, dx) + 3.0, randn(seed + 1, n, dy)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kc, lc = centring @ k @ centring, centring @ l @ centring
    linear = torch.trace(kc @ lc) / torch.sqrt(torch.trace(kc @ kc) * torch.trace(lc @ lc))
    assert cka(x, y) == pytest.approx(float(linear), abs=1e-9)
    self_x, self_y = song_hsic(k, k), song_hsic(l, l)
    if self_x > 1e-9 and self_y > 1e-9:
        debiased = song_hsic(k, l) / (self_x * self_y) ** 0.5
        assert cka(x, y, "debiased") == pytest.approx(debiased, abs=1e-9)


@settings(deadline=None, max_examples=5, database=None)
@given(seed=seeds)
def test_debiased_cka_sees_no_similarity_between_independent_wide_representations(seed):
    x, y = randn(seed, 50, 5000), randn(seed + 1, 50, 5000)
    assert abs(cka(x, y, "debiased")) < 0.1
    assert cka(x, y, "linear") > 0.5


def test_conv_shaped_inputs_are_flattened_per_sample():
    x, y = randn(0, 12, 2, 3, 3), randn(1, 12, 5)
    assert cka(x, y) == cka(x.reshape(12, -1), y)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_constant_representation_scores_zero_not_nan(estimator):
    constant = torch.full((10, 4), 0.1, dtype=torch.float64)
    assert cka(constant, randn(0, 10, 3), estimator) == 0.0
    assert cka(constant, constant, estimator) == 0.0
    assert cka(constant, randn(0, 10, 3), estimator, form="gram") == 0.0


def test_bad_cka_inputs_are_refused_with_a_reason():
    with pytest.raises(AnalysisInputError, match="at least 4"):
        cka(randn(0, 3, 2), randn(1, 3, 2), "debiased")
    with pytest.raises(ValueError, match="linear, debiased"):
        cka(randn(0, 5, 2), randn(1, 5, 2), "rbf")
    with pytest.raises(AnalysisInputError, match="must match"):
        cka(randn(0, 5, 2), randn(1, 6, 2))
    with pytest.raises(AnalysisInputError, match="NaN"):
        cka(torch.tensor([[1.0], [float("nan")], [2.0]]), randn(1, 3, 2))


def test_record_layers_keeps_outputs_that_an_inplace_relu_overwrites():
    model, x = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten()), torch.randn(5, 1, 6, 6)
    recorded = record_layers(model, x)
    assert [name for name, _ in recorded] == ["0:Conv2d", "1:ReLU", "2:Flatten"]
    conv, relu, flat = (out for _, out in recorded)
    assert (conv < 0).any() and (relu >= 0).all() and flat.shape == (5, 48)
    assert torch.equal(flat, model(x).detach())


def test_analyses_use_eval_mode_and_leave_the_model_as_it_was():
    model, x = nn.Sequential(nn.Flatten(), nn.Dropout(0.9)).train(), torch.ones(1, 1, 5, 5)
    assert torch.equal(activations(model, x, layer=1), x.reshape(-1))
    assert cka_matrix(model, torch.randn(4, 1, 5, 5))["matrix"][0][1] == pytest.approx(1.0)
    assert model.training and model[1].training


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_model_against_itself_has_a_symmetric_matrix_with_ones_on_the_diagonal(estimator):
    model, x = tiny_cnn(), torch.randn(20, 1, 8, 8)
    result = cka_matrix(model, x, estimator=estimator)
    matrix = torch.tensor(result["matrix"])
    assert result["layers"][0] == "0:Conv2d" and result["estimator"] == estimator
    assert matrix.shape == (len(model), len(model))
    assert torch.allclose(matrix.diagonal(), torch.ones(len(model)), atol=1e-9)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    against_itself = cka_matrix(model, x, estimator=estimator, other=model)["matrix"]
    assert torch.allclose(torch.tensor(against_itself), matrix, atol=1e-9)


def test_cka_matrix_agrees_with_pairwise_cka():
    model, x = tiny_cnn(), torch.randn(16, 1, 8, 8)
    outputs = [out for _, out in record_layers(model, x)]
    matrix = cka_matrix(model, x, estimator="debiased")["matrix"]
    for i, j in [(0, 2), (1, 4), (3, 7), (6, 6)]:
        # cka() works in float64 throughout; the matrix reduces float32 layers in float32 first.
        assert matrix[i][j] == pytest.approx(cka(outputs[i], outputs[j], "debiased"), abs=1e-6)
    model64, x64 = tiny_cnn().double(), x.double()
    outputs64 = [out for _, out in record_layers(model64, x64)]
    exact = cka_matrix(model64, x64, estimator="debiased")["matrix"]
    assert exact[3][7] == pytest.approx(cka(outputs64[3], outputs64[7], "debiased"), abs=1e-12)


def test_cka_matrix_against_another_model_has_its_rows_and_its_columns():
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh()).eval()
    result = cka_matrix(tiny_cnn(), torch.randn(10, 1, 8, 8), other=other)
    assert result["other_layers"] == ["0:Flatten", "1:Linear", "2:Tanh"]
    assert len(result["matrix"]) == 8 and {len(row) for row in result["matrix"]} == {3}


def test_each_compared_model_sees_its_own_inputs():
    model, other, x = tiny_cnn(0), tiny_cnn(1), torch.randn(12, 1, 8, 8)
    other_x = 2 * x + 1  # the same samples under another normalisation
    matrix = cka_matrix(model, x, other=other, other_x=other_x)["matrix"]
    rows, cols = record_layers(model, x), record_layers(other, other_x)
    for i, j in [(0, 0), (2, 5), (7, 7)]:
        assert matrix[i][j] == pytest.approx(cka(rows[i][1], cols[j][1]), abs=1e-6)
    with pytest.raises(AnalysisInputError, match="must match"):
        cka_matrix(model, x, other=other, other_x=other_x[:5])


def test_float32_layers_far_from_the_origin_keep_their_precision():
    # Every feature sits near 1e4 but varies by ~1 across samples: a float32 Gram of the raw
    # features would lose the variation to cancellation; centring first keeps it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 30), nn.Tanh(), nn.Linear(30, 20)).eval()
    with torch.no_grad():
        model[2].bias.fill_(1e4)
    x = torch.randn(40, 6)
    outputs = [out.double() for _, out in record_layers(model, x)]
    matrix = cka_matrix(model, x)["matrix"]
    for i, j in [(0, 2), (1, 2), (2, 2)]:
        assert matrix[i][j] == pytest.approx(cka(outputs[i], outputs[j]), abs=1e-5)


def test_activations_are_the_output_of_one_module_for_one_sample():
    model, x = tiny_cnn(), torch.randn(1, 1, 8, 8)
    assert activations(model, x, layer=3).shape == (4, 4, 4)
    assert activations(model, x, layer=7).shape == (10,)
    assert torch.allclose(activations(model, x, layer=7), model(x)[0])
    with pytest.raises(AnalysisInputError, match=r"layer 17 is out of range; the model has 8 layers \(0..7\)") as exc:
        activations(model, x, layer=17)
    assert exc.value.field == "layer"
    with pytest.raises(AnalysisInputError, match="out of range"):
        activations(model, x, layer=-1)


@pytest.mark.parametrize(("layer", "channel"), [(2, 1), (5, 5), (7, 3)])
def test_top_images_are_the_highest_mean_activations_in_order(layer, channel):
    model = tiny_cnn()
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    mean, std = [0.5], [0.25]
    indices, values = top_images(model, images, mean=mean, std=std, layer=layer, channel=channel, k=6, batch_size=8)
    assert len(indices) == 6 and values == sorted(values, reverse=True)
    with torch.no_grad():
        chosen = (images[indices].float() / 255 - 0.5) / 0.25
        expected = model[: layer + 1](chosen)[:, channel].reshape(6, -1).mean(dim=1)
    assert torch.allclose(torch.tensor(values), expected, atol=1e-5)
    everything = top_images(model, images, mean=mean, std=std, layer=layer, channel=channel, k=1000)
    assert everything[0][:6] == indices and len(everything[0]) == 37


def test_a_model_with_nan_weights_is_refused_not_analysed():
    model, images = tiny_cnn(), torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    with torch.no_grad():
        model[4].weight[2].fill_(float("nan"))
    with pytest.raises(AnalysisInputError, match="layer 5's output holds NaN"):
        activations(model, torch.zeros(1, 1, 8, 8), layer=5)
    with pytest.raises(AnalysisInputError, match="channel 2 of layer 4 holds NaN"):
        top_images(model, images, mean=[0.0], std=[1.0], layer=4, channel=2, k=1)
    with pytest.raises(AnalysisInputError, match="layer 4:Conv2d holds NaN"):
        cka_matrix(model, torch.randn(5, 1, 8, 8))


def test_top_images_refuses_a_layer_or_channel_the_model_lacks():
    model, images = tiny_cnn(), torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(AnalysisInputError, match=r"channel 4 is out of range; layer 0 has 4 channels \(0..3\)") as exc:
        top_images(model, images, mean=[0.0], std=[1.0], layer=0, channel=4, k=1)
    assert exc.value.field == "channel"
    with pytest.raises(AnalysisInputError, match="layer 8 is out of range"):
        top_images(model, images, mean=[0.0], std=[1.0], layer=8, channel=0, k=1)
