"""Minibatch CKA over a whole split (Nguyen, Raghu & Kornblith 2021) within a byte budget, with a bootstrap interval."""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

import models
from app.analysis.forward import FLOAT64, AnalysisInputError, Width, _device, layer_names, layer_widths, sample_bytes
from app.analysis.grams import GRAM_HELD, layer_grams
from app.analysis.maths import _centred, _check_estimator, _cka_from_hsic, _cka_ratio, _hsic_matrix

BATCH_SIZE = 256
MIN_BATCH = 4  # the unbiased HSIC needs n >= 4: a shorter last batch is dropped
RESAMPLES, LEVEL, SEED = 1000, 0.95, 0


def minibatch_cka(
    images: Tensor,
    model: nn.Sequential,
    *,
    normalization: Mapping[str, Sequence[float]],
    against: nn.Sequential | None = None,
    against_normalization: Mapping[str, Sequence[float]] | None = None,
    estimator: str = "debiased",
    batch_size: int = BATCH_SIZE,
    max_bytes: int,
) -> dict:
    """CKA between every pair of layers by the minibatch unbiased-HSIC estimator, with a bootstrap interval.

    `images` (uint8 N×C×H×W, in stored order) are cut into consecutive batches of `batch_size`, a last one
    under 4 images dropped; each model gets them under its own `normalization` ({"mean", "std"}). Per batch,
    every layer's float32 output gives a linear Gram matrix (float32 products after a shift to the batch's first
    image, summed in float64; `grams.layer_grams`) and the unbiased HSIC (Song et al. 2012), in float64,
    between every pair of layers; CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) · mean HSIC(L, L)). With
    `against`, rows are `model`'s layers and columns (`other_layers`) are `against`'s. `ci` is a 95 %
    percentile bootstrap over batches (1,000 resamples, seed 0). Activations and Grams stay within `max_bytes`.
    """
    if estimator == "linear":
        raise AnalysisInputError(
            "CKA over the test split uses the unbiased minibatch estimator only: a biased linear CKA averaged over "
            "batches depends on the batch size; use estimator=debiased, or data=cka for the linear estimator",
            field="estimator",
        )
    _check_estimator(estimator)
    if batch_size < MIN_BATCH:
        raise AnalysisInputError(f"batch_size must be at least {MIN_BATCH} (the unbiased HSIC needs 4 samples), "
                                 f"got {batch_size}", field="batch_size")
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise AnalysisInputError(f"expected uint8 images shaped N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    spans = [(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
    spans = [(start, stop) for start, stop in spans if stop - start >= MIN_BATCH]
    if not spans:
        raise AnalysisInputError(f"minibatch CKA needs at least {MIN_BATCH} images, got {len(images)}")
    nets = [(model, normalization)]
    if against is not None:
        nets.append((against, normalization if against_normalization is None else against_normalization))
    widths = []
    for (net, norm), suffix in zip(nets, ("", " of against"), strict=False):  # a message says whose layer it is
        widths += [(name + suffix, *sizes) for name, *sizes in layer_widths(net, _inputs(images[:1], net, norm))]
    largest = max(stop - start for start, stop in spans)
    chunk = forward_chunk(widths, batch_size=largest, batches=len(spans), max_bytes=max_bytes)
    room = max_bytes - _fixed_bytes(len(widths), batch_size=largest, batches=len(spans))
    # Filled in place, as small tensors kept between batches would split the freed activation blocks.
    per_batch = torch.empty(len(spans), len(widths), len(widths), dtype=torch.float64)
    for batch, (start, stop) in enumerate(spans):
        per_batch[batch] = _batch_hsic(images[start:stop], nets, names=[name for name, _, _ in widths], chunk=chunk,
                                       room=room)
    rows = len(model)
    cut = (slice(None), slice(None)) if against is None else (slice(None, rows), slice(rows, None))
    low, high = _bootstrap(per_batch, rows=cut[0], cols=cut[1])
    result = {
        "layers": layer_names(model),
        "matrix": _cka_from_hsic(per_batch.mean(dim=0), "debiased")[cut].tolist(),
        "estimator": "debiased",
        "n": sum(stop - start for start, stop in spans),
        "batches": len(spans),
        "ci": {"level": LEVEL, "low": low.tolist(), "high": high.tolist()},
    }
    if against is not None:
        result["other_layers"] = layer_names(against)
    return result


def forward_chunk(widths: Sequence[Width], *, batch_size: int, batches: int, max_bytes: int) -> int:
    """How many images go through the network(s) at once so that a chunk's activations, the float64 Gram
    matrices of every layer and the per-batch HSIC fit `max_bytes`; `batch_size` when a whole batch fits.

    AnalysisInputError names the layer and the bytes when one image does not fit, and the bytes the Grams
    need (field `batch_size`) when `batch_size` is too large for the budget.
    """
    layers, fixed = len(widths), _fixed_bytes(len(widths), batch_size=batch_size, batches=batches)
    one = sample_bytes(widths, per_output=GRAM_HELD, max_bytes=max_bytes)
    if fixed + one > max_bytes:
        raise AnalysisInputError(
            f"batch_size {batch_size} needs {fixed:,} bytes for the Gram matrices of {layers} layers and their "
            f"HSIC, plus {one:,} for one image: more than the budget of {max_bytes:,} bytes "
            "(SCV_ANALYSIS_MAX_BYTES) — use a smaller batch_size, or raise the budget",
            field="batch_size",
        )
    return min(batch_size, (max_bytes - fixed) // one)


def _fixed_bytes(layers: int, *, batch_size: int, batches: int) -> int:
    """What minibatch CKA holds whatever the chunk: the Grams, the per-batch HSIC and the bootstrap's arrays."""
    return (
        (layers + 3) * batch_size**2 * FLOAT64  # every layer's Gram, and the temporaries of the HSIC of a batch
        + batches * layers**2 * FLOAT64  # the per-batch HSIC that the bootstrap resamples
        + RESAMPLES * (batches + 6 * layers) * FLOAT64  # resample weights, one row of resampled CKA and its sort
    )


def _inputs(images: Tensor, model: nn.Sequential, normalization: Mapping[str, Sequence[float]]) -> Tensor:
    return models.normalize(images.to(_device(model)), normalization["mean"], normalization["std"])


def _batch_hsic(images: Tensor, nets: list, *, names: list[str], chunk: int, room: int) -> Tensor:
    """Unbiased HSIC between every pair of layers (of all `nets`) on one batch, as a layers × layers matrix."""
    runs = [(net, lambda start, stop, net=net, norm=norm: _inputs(images[start:stop], net, norm)) for net, norm in nets]
    grams = layer_grams(runs, samples=len(images), layers=len(names), chunk=chunk, room=room)
    _centred(grams, "debiased", names=[f"layer {name}" for name in names])
    return _hsic_matrix(grams, "debiased")


def _bootstrap(per_batch: Tensor, *, rows: slice, cols: slice) -> tuple[Tensor, Tensor]:
    """Percentile interval of every CKA over RESAMPLES resamples of the batches, with replacement (seed SEED)."""
    batches = per_batch.shape[0]
    picks = torch.randint(batches, (RESAMPLES, batches), generator=torch.Generator().manual_seed(SEED))
    # A resample's mean HSIC is a weighted sum of the batches' HSIC, weighted by how often each was drawn.
    weights = torch.zeros(RESAMPLES, batches, dtype=torch.float64)
    weights.scatter_add_(1, picks, torch.ones(RESAMPLES, batches, dtype=torch.float64)).div_(batches)
    self_hsic = weights @ per_batch.diagonal(dim1=1, dim2=2)
    quantiles = torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)
    low, high = [], []
    # Row by row, so that only RESAMPLES × columns values exist at once, however many layers there are.
    for row in range(per_batch.shape[1])[rows]:
        scores = _cka_ratio(weights @ per_batch[:, row, cols], self_hsic[:, row : row + 1], self_hsic[:, cols],
                            "debiased")
        bounds = torch.quantile(scores, quantiles, dim=0)
        low.append(bounds[0])
        high.append(bounds[1])
    return torch.stack(low), torch.stack(high)
