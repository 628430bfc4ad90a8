"""Minibatch CKA over a whole split (Nguyen, Raghu & Kornblith 2021) within a byte budget, with a bootstrap interval."""

import tempfile
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

import models
from app.analysis.maths import (
    AnalysisInputError,
    _centred,
    _check_estimator,
    _cka_from_hsic,
    _cka_ratio,
    _device,
    _evaluating,
    _hsic_matrix,
    _layer_outputs,
    layer_names,
)

BATCH_SIZE = 256
MIN_BATCH = 4  # the unbiased HSIC needs n >= 4: a shorter last batch is dropped
RESAMPLES, LEVEL, SEED = 1000, 0.95, 0
FLOAT32, FLOAT64 = 4, 8
# Per image and per value of a layer's output while its Gram rows are taken: the float32 output, its float64
# copy, and (when earlier chunks of the batch come back from disk) a float32 read buffer with its float64 copy.
HELD, HELD_SPILLING = FLOAT32 + FLOAT64, 2 * (FLOAT32 + FLOAT64)

Width = tuple[str, int, int]  # a layer's name, and the values per image of its input and of its output


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
    every layer's float32 output gives a float64 linear Gram matrix and the unbiased HSIC (Song et al. 2012)
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
    with _Spill([out for _, _, out in widths], rows=largest) as spill:
        per_batch = torch.stack([
            _batch_hsic(images[start:stop], nets, names=[name for name, _, _ in widths], chunk=chunk, spill=spill)
            for start, stop in spans
        ]).cpu()
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


def layer_widths(model: nn.Sequential, sample: Tensor) -> list[Width]:
    """(name, input values, output values) per image of every layer, from one normalised image (1×C×H×W)."""
    widths, before = [], sample[0].numel()
    with _evaluating(model):
        for name, out in _layer_outputs(model, sample):
            widths.append((name, before, out[0].numel()))
            before = out[0].numel()
    return widths


def forward_chunk(widths: Sequence[Width], *, batch_size: int, batches: int, max_bytes: int) -> int:
    """How many images go through the network(s) at once so that a chunk's activations, the float64 Gram
    matrices of every layer and the per-batch HSIC fit `max_bytes`; `batch_size` when a whole batch fits.

    AnalysisInputError names the layer and the bytes when one image does not fit, and the bytes the Grams
    need (field `batch_size`) when `batch_size` is too large for the budget.
    """
    layers = len(widths)
    fixed = (
        (layers + 3) * batch_size**2 * FLOAT64  # every layer's Gram, and the temporaries of centring one
        + batches * layers**2 * FLOAT64  # the per-batch HSIC that the bootstrap resamples
        + RESAMPLES * (batches + 6 * layers) * FLOAT64  # resample weights, one row of resampled CKA and its sort
    )
    # The layer's input is alive while the layer runs; one more image's worth holds the batch's reference sample.
    name, worst = max(((name, FLOAT32 * before + HELD_SPILLING * out) for name, before, out in widths),
                      key=lambda width: width[1])
    if 2 * worst > max_bytes:
        raise AnalysisInputError(
            f"layer {name}: one image needs {2 * worst:,} bytes to take its Gram matrix, more than the budget of "
            f"{max_bytes:,} bytes (SCV_ANALYSIS_MAX_BYTES) — raise the budget, or analyse a narrower network"
        )
    if fixed + 2 * worst > max_bytes:
        raise AnalysisInputError(
            f"batch_size {batch_size} needs {fixed:,} bytes for the Gram matrices of {layers} layers and their "
            f"HSIC, plus {2 * worst:,} for one image at layer {name}: more than the budget of {max_bytes:,} bytes "
            "(SCV_ANALYSIS_MAX_BYTES) — use a smaller batch_size, or raise the budget",
            field="batch_size",
        )
    whole = (batch_size + 1) * max(FLOAT32 * before + HELD * out for _, before, out in widths)
    if fixed + whole <= max_bytes:
        return batch_size
    return min(batch_size - 1, (max_bytes - fixed) // worst - 1)


def _inputs(images: Tensor, model: nn.Sequential, normalization: Mapping[str, Sequence[float]]) -> Tensor:
    return models.normalize(images.to(_device(model)), normalization["mean"], normalization["std"])


def _batch_hsic(images: Tensor, nets: list, *, names: list[str], chunk: int, spill: "_Spill") -> Tensor:
    """Unbiased HSIC between every pair of layers (of all `nets`) on one batch, as a layers × layers matrix."""
    size, device = len(images), _device(nets[0][0])
    grams = torch.empty(len(names), size, size, dtype=torch.float64, device=device)
    for start in range(0, size, chunk):
        layer = 0
        for net, normalization in nets:
            with _evaluating(net):
                for _, out in _layer_outputs(net, _inputs(images[start : start + chunk], net, normalization)):
                    _gram_rows(grams[layer], out, start=start, chunk=chunk, spill=spill, layer=layer)
                    layer += 1
    for layer, name in enumerate(names):
        grams[layer] = _centred(grams[layer], "debiased", name=f"layer {name}")
    return _hsic_matrix(grams, "debiased")


def _gram_rows(gram: Tensor, out: Tensor, *, start: int, chunk: int, spill: "_Spill", layer: int) -> None:
    """Fill the rows (and columns) of `gram` for this chunk's output `out`, against itself and the batch's
    earlier chunks (read back from `spill`); store the chunk there when a later chunk will need it."""
    x = out.reshape(len(out), -1).float()
    stop = start + len(x)
    # Translating every sample leaves the unbiased HSIC unchanged; moving the batch's first one to the origin
    # keeps the float64 sums within the data's spread, and makes a constant layer's Gram exactly zero.
    reference = (x[:1] if start == 0 else spill.read(layer, 0, 1)).to(gram.device, torch.float64)
    rows = x.to(gram.device, torch.float64).sub_(reference)
    gram[start:stop, start:stop] = rows @ rows.T
    for before in range(0, start, chunk):
        earlier = spill.read(layer, before, before + chunk).to(gram.device, torch.float64).sub_(reference)
        block = rows @ earlier.T
        gram[start:stop, before : before + chunk] = block
        gram[before : before + chunk, start:stop] = block.T
    if stop < len(gram):
        spill.write(layer, start, x)


class _Spill:
    """The current batch's earlier chunks of every layer's output, in a temporary file: a whole batch of a
    wide layer would not fit the budget, and recomputing it for every later chunk would cost forwards."""

    def __init__(self, widths: list[int], *, rows: int):
        self._widths, self._offsets = widths, [0]
        for width in widths[:-1]:
            self._offsets.append(self._offsets[-1] + rows * width * FLOAT32)
        self._file = None

    def __enter__(self) -> "_Spill":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, layer: int, start: int, x: Tensor) -> None:
        if self._file is None:  # created on first use: a batch that fits in one chunk never touches the disk
            self._file = tempfile.TemporaryFile(prefix="scv-cka-")
        self._file.seek(self._offsets[layer] + start * self._widths[layer] * FLOAT32)
        self._file.write(memoryview(x.detach().cpu().contiguous().numpy()).cast("B"))

    def read(self, layer: int, start: int, stop: int) -> Tensor:
        out = torch.empty(stop - start, self._widths[layer], dtype=torch.float32)
        self._file.seek(self._offsets[layer] + start * self._widths[layer] * FLOAT32)
        if self._file.readinto(memoryview(out.numpy()).cast("B")) != out.numel() * FLOAT32:
            raise OSError(f"the spill file of layer {layer} ended early; was it removed?")
        return out


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
