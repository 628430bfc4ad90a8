"""Every layer's linear Gram matrix over a set of samples, the network run on a few samples at a time."""

import tempfile
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from app.analysis.forward import FLOAT32, _device, _evaluating, _layer_outputs

# Per sample and per output value of a layer while its Gram rows are taken, all float32: the output, a contiguous
# copy of it (channels-last maps), the copy shifted by the reference sample, and an earlier chunk read back.
GRAM_HELD = 4 * FLOAT32

PARTS = 4
Run = tuple[nn.Sequential, Callable[[int, int], Tensor]]  # a network, and its normalised inputs [start, stop)


def layer_grams(runs: Sequence[Run], *, samples: int, layers: int, chunk: int) -> Tensor:
    """The linear Gram matrices (layers × samples × samples, float64) of every layer of every run, in order.

    The networks see `chunk` samples at a time; the Gram rows of each chunk are taken against itself and the
    earlier chunks, which wait in a temporary file, so only one chunk's outputs are ever in memory. Every sample
    is first moved by the first one: CKA does not change under a translation, and near the origin a float32
    product keeps the data's variation (the products run in float32, twice as fast, then sum in float64).
    """
    device = _device(runs[0][0])
    grams = torch.empty(layers, samples, samples, dtype=torch.float64, device=device)
    with _Spill(rows=samples) as spill:
        for start in range(0, samples, chunk):
            stop, layer = min(start + chunk, samples), 0
            for net, inputs in runs:
                with _evaluating(net):
                    for _, out in _layer_outputs(net, inputs(start, stop)):
                        _gram_rows(grams[layer], out, start=start, chunk=chunk, spill=spill, layer=layer)
                        layer += 1
    return grams


def _gram_rows(gram: Tensor, out: Tensor, *, start: int, chunk: int, spill: "_Spill", layer: int) -> None:
    """Fill the rows (and columns) of `gram` for this chunk's output `out`, against itself and the earlier chunks
    (read back from `spill`); store the chunk there when a later chunk will need it."""
    x = out.reshape(len(out), -1)
    if x.dtype != torch.float64:
        x = x.float()
    stop = start + len(x)
    reference = x[:1] if start == 0 else spill.read(layer, 0, 1).to(x.device)
    rows = x - reference  # a constant layer's Gram is then exactly zero
    # The chunk against itself is symmetric: its rows in PARTS parts, each against itself and the parts above it,
    # mirrored, cost 5/8 of the products of one rows @ rows.T (measured ~0.7 of its time).
    part = -(-len(rows) // PARTS)
    for top in range(0, len(rows), part):
        bottom = min(top + part, len(rows))
        block = rows[top:bottom] @ rows[:bottom].T
        gram[start + top : start + bottom, start : start + bottom] = block
        gram[start : start + top, start + top : start + bottom] = block[:, :top].T
    for before in range(0, start, chunk):
        earlier = spill.read(layer, before, before + chunk).to(x.device).sub_(reference)
        block = rows @ earlier.T
        gram[start:stop, before : before + chunk] = block
        gram[before : before + chunk, start:stop] = block.T
    if stop < len(gram):
        spill.write(layer, start, x)


class _Spill:
    """Earlier chunks of every layer's output, in a temporary file: all the samples of a wide layer would not fit
    the budget, and recomputing them for every later chunk would cost forwards."""

    def __init__(self, *, rows: int):
        self._rows, self._slots, self._end, self._file = rows, {}, 0, None

    def __enter__(self) -> "_Spill":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, layer: int, start: int, x: Tensor) -> None:
        if self._file is None:  # created on first use: samples that fit in one chunk never touch the disk
            self._file = tempfile.TemporaryFile(prefix="scv-cka-")
        if layer not in self._slots:  # the first chunk reaches every layer, in order
            self._slots[layer] = (self._end, x.shape[1], x.dtype)
            self._end += self._rows * x.shape[1] * x.element_size()
        offset, width, dtype = self._slots[layer]
        self._file.seek(offset + start * width * x.element_size())
        self._file.write(memoryview(x.detach().to(dtype).cpu().contiguous().numpy()).cast("B"))

    def read(self, layer: int, start: int, stop: int) -> Tensor:
        offset, width, dtype = self._slots[layer]
        out = torch.empty(stop - start, width, dtype=dtype)
        self._file.seek(offset + start * width * out.element_size())
        if self._file.readinto(memoryview(out.numpy()).cast("B")) != out.numel() * out.element_size():
            raise OSError(f"the spill file of layer {layer} ended early; was it removed?")
        return out
