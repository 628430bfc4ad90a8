"""Representation analysis of Sequential CNNs: CKA between layers, activations, top images."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from app.analysis.forward import (
    FLOAT32,
    FLOAT64,
    AnalysisInputError,
    _device,
    _evaluating,
    layer_names,
    layer_widths,
    sample_bytes,
)
from app.analysis.grams import GRAM_HELD, layer_grams

ESTIMATORS = ("linear", "debiased")
TOP_BATCH = 512  # top_images' batch without a budget
# Per image and per output value while a prefix of the network runs: the output and its own float32 temporaries.
PREFIX_HELD = 2 * FLOAT32
FORMS = ("auto", "gram", "features")


def cka(x: Tensor, y: Tensor, estimator: str = "linear", *, form: str = "auto") -> float:
    """Centred kernel alignment of two representations (n × features) of the same n inputs.

    `estimator="linear"`: biased-HSIC linear CKA (Kornblith et al. 2019), in [0, 1].
    `estimator="debiased"`: unbiased HSIC (Song et al. 2012), needs n >= 4, may dip below 0.
    `form` picks the linear computation: `features` (d × d products), `gram` (n × n) or `auto`.
    A representation without variance (constant features) gives 0.0, not NaN.
    """
    _check_estimator(estimator)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(FORMS)}")
    if form == "features" and estimator != "linear":
        raise ValueError("form='features' exists only for the linear estimator")
    if x.shape[0] != y.shape[0]:
        raise AnalysisInputError(f"x has {x.shape[0]} samples but y has {y.shape[0]}; they must match")
    _check_samples(x.shape[0], estimator)
    xf, yf = _features(x), _features(y)
    # The d × d products win while features are few next to samples; else the n × n Grams do.
    few_features = max(xf.shape[1], yf.shape[1]) < xf.shape[0]
    if form == "features" or (form == "auto" and estimator == "linear" and few_features):
        xc, yc = xf - xf.mean(dim=0), yf - yf.mean(dim=0)
        _check_finite(xc, name="x")
        _check_finite(yc, name="y")
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        norms = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
        score = torch.where(norms > 0, cross / norms.clamp(min=torch.finfo(norms.dtype).tiny), 0.0)
        return float(_clamped(score, estimator))
    grams = _centred(torch.stack([xf @ xf.T, yf @ yf.T]), estimator, names=["x", "y"])
    return float(_cka_from_hsic(_hsic_matrix(grams, estimator), estimator)[0, 1])


def cka_matrix(model: nn.Sequential, x: Tensor, *, estimator: str = "linear", other: nn.Sequential | None = None,
               other_x: Tensor | None = None, max_bytes: int | None = None) -> dict:
    """CKA between every pair of layers of `model`, or between `model` (rows) and `other` (columns).

    `x` is a normalised input batch (N×C×H×W); `other` gets `other_x` (the same samples under its
    own normalisation), else `x` too. A layer without variance scores 0 against everything, itself
    included. Float32 layers are reduced to Gram matrices in float32 (shifted first, so without
    cancellation), which changes CKA by ~1e-6; everything after that is float64. With `max_bytes`, the
    networks see as many samples at a time as fit it beside the Gram matrices (AnalysisInputError names the
    layer when one sample does not fit); the answer does not depend on it.
    """
    _check_estimator(estimator)
    _check_samples(x.shape[0], estimator)
    runs = [(model, x)] if other is None else [(model, x), (other, x if other_x is None else other_x)]
    if any(len(inputs) != len(x) for _, inputs in runs):
        raise AnalysisInputError(f"x has {len(x)} samples but other_x has {len(runs[-1][1])}; they must match")
    names = [name for network, _ in runs for name in layer_names(network)]
    count, chunk, room = len(x), len(x), None
    if max_bytes is not None:
        grams_bytes = (len(names) + 3) * count**2 * FLOAT64  # every layer's Gram, and the temporaries of the HSIC
        widths = [width for network, inputs in runs for width in layer_widths(network, inputs[:1])]
        one = sample_bytes(widths, per_output=GRAM_HELD, max_bytes=max_bytes, beside=grams_bytes)
        room = max_bytes - grams_bytes
        chunk = min(count, room // one)
    # One Gram matrix per layer, shared by every pair it takes part in, and taken as the layer runs.
    grams = layer_grams([(network, lambda start, stop, inputs=inputs: inputs[start:stop]) for network, inputs in runs],
                        samples=count, layers=len(names), chunk=chunk, room=room)
    _centred(grams, estimator, names=[f"layer {name}" for name in names])
    scores = _cka_from_hsic(_hsic_matrix(grams, estimator), estimator).cpu()
    rows = len(model)
    if other is None:
        return {"layers": names, "matrix": scores.tolist(), "estimator": estimator}
    return {"layers": names[:rows], "other_layers": names[rows:], "matrix": scores[:rows, rows:].tolist(),
            "estimator": estimator}


def activations(model: nn.Sequential, x: Tensor, *, layer: int, max_bytes: int | None = None) -> Tensor:
    """Output of module `layer` for one normalised sample (1×C×H×W): C'×H'×W' or F.

    With `max_bytes`, AnalysisInputError names the layer up to `layer` whose output for one sample does not fit.
    """
    _check_layer(model, layer)
    if x.dim() != 4 or x.shape[0] != 1:
        raise AnalysisInputError(f"expected one sample shaped 1×C×H×W, got {tuple(x.shape)}")
    if max_bytes is not None:
        sample_bytes(layer_widths(model, x, upto=layer), per_output=PREFIX_HELD, max_bytes=max_bytes)
    out = _run_prefix(model, x, layer=layer)[0].cpu()
    _check_finite(out, name=f"layer {layer}'s output")  # JSON has no NaN, and a plot of one shows nothing
    return out


def top_images(model: nn.Sequential, images_uint8: Tensor, *, mean: Sequence[float] | Tensor,
               std: Sequence[float] | Tensor, layer: int, channel: int, k: int, batch_size: int | None = None,
               max_bytes: int | None = None) -> tuple[list[int], list[float]]:
    """Indices and values of the k images whose mean activation of `channel` at `layer` is highest.

    The images go through the layers up to `layer` `batch_size` at a time: by default as many as `max_bytes`
    holds at the costliest of those layers (AnalysisInputError names it when one image does not fit), or
    TOP_BATCH without a budget.
    """
    _check_layer(model, layer)
    if images_uint8.dim() != 4 or images_uint8.shape[0] == 0:
        raise AnalysisInputError(f"expected images shaped N×C×H×W with N >= 1, got {tuple(images_uint8.shape)}")
    if k < 1:
        raise AnalysisInputError(f"k must be at least 1, got {k}", field="k")
    device, channels = _device(model), images_uint8.shape[1]
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device).reshape(1, -1, 1, 1) for v in (mean, std))
    if {mean_t.numel(), std_t.numel()} - {1, channels}:
        raise AnalysisInputError(f"mean and std need one value per channel ({channels}); got {mean_t.numel()}, "
                                 f"{std_t.numel()}")
    if max_bytes is not None:
        sample = (images_uint8[:1].to(device).float() / 255 - mean_t) / std_t
        fits = max_bytes // sample_bytes(layer_widths(model, sample, upto=layer), per_output=PREFIX_HELD,
                                         max_bytes=max_bytes)
        batch_size = min(batch_size or fits, fits)
    # Filled in place: small tensors kept between batches would split the freed activation blocks, and the
    # allocator would take new memory for every batch (measured: +1 MB a batch).
    scores, batch_size = torch.empty(len(images_uint8)), batch_size or TOP_BATCH
    for start in range(0, len(images_uint8), batch_size):
        batch = images_uint8[start : start + batch_size]
        out = _run_prefix(model, (batch.to(device).float() / 255 - mean_t) / std_t, layer=layer)
        if not 0 <= channel < out.shape[1]:
            raise AnalysisInputError(f"channel {channel} is out of range; layer {layer} has {out.shape[1]} channels "
                                     f"(0..{out.shape[1] - 1})", field="channel")
        # Spatial mean for conv maps; a flat output's "channel" is its feature itself.
        scores[start : start + len(batch)] = out[:, channel].reshape(out.shape[0], -1).mean(dim=1)
    _check_finite(scores, name=f"channel {channel} of layer {layer}")  # NaN would sort first
    # Stable sort so tied activations come back in test-split order, the same on every call.
    values, order = torch.sort(scores, descending=True, stable=True)
    k = min(k, len(values))
    return order[:k].tolist(), values[:k].tolist()


def _run_prefix(model: nn.Sequential, x: Tensor, *, layer: int) -> Tensor:
    # The modules after `layer` cannot change its output, so they are not run at all.
    with _evaluating(model):
        return model[: layer + 1](x.to(_device(model)))


def _check_layer(model: nn.Sequential, layer: int) -> None:
    if not 0 <= layer < len(model):
        raise AnalysisInputError(f"layer {layer} is out of range; the model has {len(model)} layers "
                                 f"(0..{len(model) - 1})", field="layer")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")


def _check_samples(n: int, estimator: str) -> None:
    if estimator == "debiased" and n < 4:
        raise AnalysisInputError(f"the debiased estimator needs at least 4 samples, got {n}", field="estimator")
    if n < 2:
        raise AnalysisInputError(f"CKA needs at least 2 samples, got {n}")


def _features(x: Tensor) -> Tensor:
    """`x` flattened per sample, in float64; all zeros when every sample is the same."""
    # Tested exactly, before any arithmetic: centring a constant in floating point leaves
    # rounding noise that would pose as a representation. Two rows first, as they rarely match.
    if torch.equal(x[0], x[1]) and (x == x[:1]).all():
        return torch.zeros(x.shape[0], 1, dtype=torch.float64, device=x.device)
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _centred(grams: Tensor, estimator: str, *, names: Sequence[str]) -> Tensor:
    """Linear Gram matrices (m × n × n, any dtype) centred (H K H) in float64, in place when they are float64;
    for `debiased` their diagonals zeroed. `names` name them in the error when one holds NaN or infinity."""
    grams = grams.to(torch.float64)
    # NaN and infinity survive the product and then a sum, so each small n × n sum is the cheap place to look (a
    # Gram whose sum overflows could not give a finite HSIC either).
    finite = torch.isfinite(grams.sum(dim=(-2, -1))).tolist()
    if not all(finite):
        raise _not_finite(names[finite.index(False)])
    # Centring the n × n Gram equals centring the n × d features first, at a fraction of the cost; the unbiased
    # HSIC is unchanged by it, and it keeps float64 sums small. Column means off, then the row means of that:
    # K - column means - row means + overall mean.
    grams.sub_(grams.mean(dim=-2, keepdim=True)).sub_(grams.mean(dim=-1, keepdim=True))
    if estimator == "debiased":
        grams.diagonal(dim1=-2, dim2=-1).zero_()
    return grams


def _check_finite(t: Tensor, *, name: str) -> None:
    if not torch.isfinite(t).all():
        raise _not_finite(name)


def _not_finite(name: str) -> AnalysisInputError:
    return AnalysisInputError(f"{name} holds NaN or infinite values (did training diverge?); it cannot be analysed")


def _hsic_matrix(grams: Tensor, estimator: str) -> Tensor:
    """HSIC between every pair of the stacked m × n × n Gram matrices, as one m × m matrix."""
    m, n = grams.shape[0], grams.shape[-1]
    flat = grams.reshape(m, -1)
    # The Grams come from centred features, so their trace inner product is the biased HSIC
    # up to a factor that normalisation cancels.
    hsic = flat @ flat.T
    if estimator == "debiased":
        rows = grams.sum(dim=-1)
        totals = rows.sum(dim=-1)
        hsic = hsic + torch.outer(totals, totals) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (rows @ rows.T)
        hsic = hsic / (n * (n - 3))
    return hsic


def _cka_from_hsic(hsic: Tensor, estimator: str) -> Tensor:
    self_hsic = hsic.diagonal()
    return _cka_ratio(hsic, self_hsic[:, None], self_hsic[None, :], estimator)


def _cka_ratio(cross: Tensor, rows: Tensor, cols: Tensor, estimator: str) -> Tensor:
    """cross / sqrt(rows · cols), broadcast: HSIC between two representations over their self-HSICs."""
    denominator = torch.sqrt(rows.clamp(min=0.0) * cols.clamp(min=0.0))
    # A layer without variance has no similarity to anything; 0 keeps the JSON free of NaN.
    scores = torch.where(denominator > 0, cross / denominator.clamp(min=torch.finfo(cross.dtype).tiny), 0.0)
    return _clamped(scores, estimator)


def _clamped(scores: Tensor, estimator: str) -> Tensor:
    # Rounding can leave a value a hair outside the estimator's range, e.g. cka(X, X) = 1 + 2e-16.
    return scores.clamp(0.0 if estimator == "linear" else -1.0, 1.0)
