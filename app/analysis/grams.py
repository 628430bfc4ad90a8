"""Every layer's linear Gram matrix over a set of samples, the network run on a few samples at a time."""

import tempfile
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from app.analysis.forward import FLOAT32, _device, _evaluating, _layer_outputs

# Per sample and per output value of a layer while a chunk runs, all float32: the output, a contiguous copy of it
# (channels-last maps), and its copy shifted to the reference sample or cut into blocks for the spill file.
GRAM_HELD = 3 * FLOAT32
PARTS = 4

Run = tuple[nn.Sequential, Callable[[int, int], Tensor]]  # a network, and its normalised inputs [start, stop)


def layer_grams(runs: Sequence[Run], *, samples: int, layers: int, chunk: int, room: int | None) -> Tensor:
    """The linear Gram matrices (layers × samples × samples, float64) of every layer of every run, in order.

    The networks see `chunk` samples at a time. When that is all of them, each layer's Gram is taken as the layer
    runs; otherwise every output goes to a temporary file, by blocks of features that fit `room` bytes for all
    the samples, and each Gram is summed over those blocks afterwards: the file is written and read once.
    Every sample is first moved by the first one: CKA does not change under a translation, and near the origin a
    float32 product keeps the data's variation (the products run in float32, twice as fast, summed in float64).
    """
    grams = torch.zeros(layers, samples, samples, dtype=torch.float64, device=_device(runs[0][0]))
    with _Spill(rows=samples, room=room) as spill:
        for start in range(0, samples, chunk):
            stop, layer = min(start + chunk, samples), 0
            for net, inputs in runs:
                with _evaluating(net):
                    for _, out in _layer_outputs(net, inputs(start, stop)):
                        x = out.reshape(len(out), -1)
                        x = x if x.dtype == torch.float64 else x.float()
                        if chunk >= samples:
                            _add_gram(grams[layer], x - x[:1])  # a constant layer's Gram is then exactly zero
                        else:
                            spill.write(layer, start, x)
                        layer += 1
        if chunk < samples:
            for layer in range(layers):
                for block in spill.blocks(layer):
                    block = block.to(grams.device)
                    _add_gram(grams[layer], block.sub_(block[:1].clone()))
    return grams


def _add_gram(gram: Tensor, rows: Tensor) -> None:
    """gram += rows @ rows.T. The product is symmetric: the rows in PARTS parts, each against itself and the parts
    above it, mirrored, cost 5/8 of the products of one rows @ rows.T (measured ~0.7 of its time)."""
    part = -(-len(rows) // PARTS)
    for top in range(0, len(rows), part):
        bottom = min(top + part, len(rows))
        block = rows[top:bottom] @ rows[:bottom].T
        gram[top:bottom, :bottom] += block
        gram[:top, top:bottom] += block[:, :top].T


class _Spill:
    """Every layer's output for all the samples, in a temporary file laid out by blocks of features: written a
    chunk of samples at a time as the network runs, read back one block of features of every sample at a time."""

    def __init__(self, *, rows: int, room: int | None):
        self._rows, self._room, self._slots, self._end, self._file = rows, room, {}, 0, None

    def __enter__(self) -> "_Spill":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, layer: int, start: int, x: Tensor) -> None:
        if self._file is None:  # created on first use: samples that fit in one chunk never touch the disk
            self._file = tempfile.TemporaryFile(prefix="scv-cka-")
        if layer not in self._slots:  # the first chunk reaches every layer, in order
            # A block read back is shifted in place; its product and the Grams are counted by the caller.
            fits = x.shape[1] if self._room is None else self._room // (self._rows * x.element_size())
            block = max(1, min(x.shape[1], fits))
            self._slots[layer] = (self._end, x.shape[1], block, x.dtype)
            self._end += self._rows * x.shape[1] * x.element_size()
        offset, width, block, _ = self._slots[layer]
        for first in range(0, width, block):
            part = x[:, first : first + block]
            self._file.seek(offset + (first * self._rows + start * part.shape[1]) * x.element_size())
            self._file.write(memoryview(part.detach().cpu().contiguous().numpy()).cast("B"))

    def blocks(self, layer: int) -> Iterator[Tensor]:
        offset, width, block, dtype = self._slots[layer]
        for first in range(0, width, block):
            out = torch.empty(self._rows, min(block, width - first), dtype=dtype)
            self._file.seek(offset + first * self._rows * out.element_size())
            if self._file.readinto(memoryview(out.numpy()).cast("B")) != out.numel() * out.element_size():
                raise OSError(f"the spill file of layer {layer} ended early; was it removed?")
            yield out
