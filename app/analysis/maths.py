"""Representation analysis of Sequential CNNs: CKA between layers, activations, top images."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

ESTIMATORS = ("linear", "debiased")
FORMS = ("auto", "gram", "features")


class AnalysisInputError(ValueError):
    """A layer, channel, sample or tensor that the analysis cannot work on; `field` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


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
    grams = torch.stack([_gram(xf, estimator, name="x"), _gram(yf, estimator, name="y")])
    return float(_cka_from_hsic(_hsic_matrix(grams, estimator), estimator)[0, 1])


def layer_names(model: nn.Sequential) -> list[str]:
    """The names CKA matrices and activations use for the model's modules: "index:ClassName"."""
    return [f"{index}:{type(module).__name__}" for index, module in enumerate(model)]


def cka_matrix(model: nn.Sequential, x: Tensor, *, estimator: str = "linear", other: nn.Sequential | None = None,
               other_x: Tensor | None = None) -> dict:
    """CKA between every pair of layers of `model`, or between `model` (rows) and `other` (columns).

    `x` is a normalised input batch (N×C×H×W); `other` gets `other_x` (the same samples under its
    own normalisation), else `x` too. A layer without variance scores 0 against everything, itself
    included. Float32 layers are reduced to Gram matrices in float32 (shifted first, so without
    cancellation), which changes CKA by ~1e-6; everything after that is float64.
    """
    _check_estimator(estimator)
    _check_samples(x.shape[0], estimator)
    runs = [(model, x)] if other is None else [(model, x), (other, x if other_x is None else other_x)]
    if any(len(inputs) != len(x) for _, inputs in runs):
        raise AnalysisInputError(f"x has {len(x)} samples but other_x has {len(runs[-1][1])}; they must match")
    # One Gram matrix per layer, shared by every pair it takes part in, and taken as the layer runs: no output has
    # to be kept or copied.
    names, grams = [], []
    for network, inputs in runs:
        with _evaluating(network):
            for name, out in _layer_outputs(network, inputs):
                names.append(name)
                grams.append(_gram(_features(out, keep_float32=True), estimator, name=f"layer {name}"))
    scores = _cka_from_hsic(_hsic_matrix(torch.stack(grams), estimator), estimator).cpu()
    rows = len(model)
    if other is None:
        return {"layers": names, "matrix": scores.tolist(), "estimator": estimator}
    return {"layers": names[:rows], "other_layers": names[rows:], "matrix": scores[:rows, rows:].tolist(),
            "estimator": estimator}


def activations(model: nn.Sequential, x: Tensor, *, layer: int) -> Tensor:
    """Output of module `layer` for one normalised sample (1×C×H×W): C'×H'×W' or F."""
    _check_layer(model, layer)
    if x.dim() != 4 or x.shape[0] != 1:
        raise AnalysisInputError(f"expected one sample shaped 1×C×H×W, got {tuple(x.shape)}")
    out = _run_prefix(model, x, layer=layer)[0].cpu()
    _check_finite(out, name=f"layer {layer}'s output")  # JSON has no NaN, and a plot of one shows nothing
    return out


def top_images(model: nn.Sequential, images_uint8: Tensor, *, mean: Sequence[float] | Tensor,
               std: Sequence[float] | Tensor, layer: int, channel: int, k: int,
               batch_size: int = 512) -> tuple[list[int], list[float]]:
    """Indices and values of the k images whose mean activation of `channel` at `layer` is highest."""
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
    scores = []
    for batch in images_uint8.split(batch_size):
        out = _run_prefix(model, (batch.to(device).float() / 255 - mean_t) / std_t, layer=layer)
        if not 0 <= channel < out.shape[1]:
            raise AnalysisInputError(f"channel {channel} is out of range; layer {layer} has {out.shape[1]} channels "
                                     f"(0..{out.shape[1] - 1})", field="channel")
        # Spatial mean for conv maps; a flat output's "channel" is its feature itself.
        scores.append(out[:, channel].reshape(out.shape[0], -1).mean(dim=1).cpu())
    scores = torch.cat(scores)
    _check_finite(scores, name=f"channel {channel} of layer {layer}")  # NaN would sort first
    # Stable sort so tied activations come back in test-split order, the same on every call.
    values, order = torch.sort(scores, descending=True, stable=True)
    k = min(k, len(values))
    return order[:k].tolist(), values[:k].tolist()


def _layer_outputs(model: nn.Sequential, x: Tensor) -> Iterator[tuple[str, Tensor]]:
    """Each top-level module's output in turn, valid only until the next module runs.

    Callers hold `_evaluating(model)` around the loop: grad mode is per thread, so it must not be left switched
    inside a generator that a caller might abandon.
    """
    # Stepping through the modules gives what forward hooks would, without attaching state to a model that
    # concurrent requests may share.
    out = x.to(_device(model))
    for name, module in zip(layer_names(model), model, strict=True):
        out = module(out)
        yield name, out


def _run_prefix(model: nn.Sequential, x: Tensor, *, layer: int) -> Tensor:
    # The modules after `layer` cannot change its output, so they are not run at all.
    with _evaluating(model):
        return model[: layer + 1](x.to(_device(model)))


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients for the duration, then the model's own mode back."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


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


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _features(x: Tensor, *, keep_float32: bool = False) -> Tensor:
    """`x` flattened per sample, in float64 (float32 kept if asked); all zeros when every sample is the same."""
    dtype = torch.float32 if keep_float32 and x.dtype == torch.float32 else torch.float64
    # Tested exactly, before any arithmetic: centring a constant in floating point leaves
    # rounding noise that would pose as a representation. Two rows first, as they rarely match.
    if torch.equal(x[0], x[1]) and (x == x[:1]).all():
        return torch.zeros(x.shape[0], 1, dtype=dtype, device=x.device)
    return x.reshape(x.shape[0], -1).to(dtype)


def _gram(features: Tensor, estimator: str, *, name: str) -> Tensor:
    """Centred linear Gram matrix H K H in float64; for `debiased` its diagonal zeroed."""
    if features.dtype != torch.float64:
        # Features far from the origin would lose their variation to cancellation in a float32 Gram.
        # Moving one sample to the origin brings them within the data's spread, one pass cheaper than
        # subtracting the mean; the float64 centring below removes any translation exactly.
        features = features - features[:1]
    return _centred(features @ features.T, estimator, name=name)


def _centred(gram: Tensor, estimator: str, *, name: str) -> Tensor:
    """A linear Gram matrix (any dtype) centred (H K H) in float64; for `debiased` its diagonal zeroed."""
    gram = gram.to(torch.float64)
    # NaN and infinity survive the product, so the small n × n result is the cheap place to look.
    _check_finite(gram, name=name)
    # Centring the n × n Gram equals centring the n × d features first, at a fraction of the
    # cost; the unbiased HSIC is unchanged by it, and it keeps float64 sums small.
    gram = gram - gram.mean(dim=0, keepdim=True) - gram.mean(dim=1, keepdim=True) + gram.mean()
    if estimator == "debiased":
        gram.fill_diagonal_(0.0)
    return gram


def _check_finite(t: Tensor, *, name: str) -> None:
    if not torch.isfinite(t).all():
        raise AnalysisInputError(f"{name} holds NaN or infinite values (did training diverge?); it cannot be analysed")


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
