"""Memory estimates of a resolved network from its layers' output sizes: batches sized from a byte budget."""

from __future__ import annotations

from dataclasses import dataclass

from models.layers import activation_elements

FLOAT32 = 4  # bytes per activation value: networks run in float32 (bf16 only halves it)
# Training keeps every layer's output for backward, and backward holds their gradients and temporaries
# beside them: about three times the forward activations per image (weights and optimizer state aside).
TRAINING_FACTOR = 3


class MemoryBudgetError(ValueError):
    """One image needs more activation memory than the budget; `index`/`layer_type` name the layer where it
    runs out (None when only a batch is too large), `needed` the bytes one image needs up to there."""

    def __init__(self, reason: str, *, index: int | None, layer_type: str | None, needed: int) -> None:
        super().__init__(reason)
        self.reason, self.index, self.layer_type, self.needed = reason, index, layer_type, needed


@dataclass(frozen=True)
class Footprint:
    """Forward activation bytes of one image: in total, and cumulated layer by layer ((index, type, bytes))."""

    per_sample: int
    cumulative: tuple[tuple[int, str, int], ...]


def footprint(resolved: list[dict], *, input_shape: tuple[int, int, int] | list[int]) -> Footprint:
    """The sum over the Sequential's layers of their output values × 4 bytes, for one image."""
    total, steps = 0, []
    for index, layer_type, elements in activation_elements(resolved, input_shape=tuple(input_shape)):
        total += elements * FLOAT32
        steps.append((index, layer_type, total))
    return Footprint(per_sample=total, cumulative=tuple(steps))


def forward_batch(resolved: list[dict], *, input_shape, max_bytes: int, factor: int = 1) -> int:
    """The most images per forward pass within `max_bytes` (`factor` × the forward activations per image); at
    least 1. MemoryBudgetError names the layer where a single image runs out of the budget."""
    fp = footprint(resolved, input_shape=input_shape)
    if fp.per_sample * factor > max_bytes:
        index, layer_type, needed = next(s for s in fp.cumulative if s[2] * factor > max_bytes)
        raise MemoryBudgetError(
            f"layers[{index}] ({layer_type}): one image needs {needed * factor:,} bytes of activations up to this "
            f"layer ({fp.per_sample * factor:,} for the whole network), more than the budget of {max_bytes:,} "
            "bytes (SCV_ANALYSIS_MAX_BYTES) — use fewer channels or downsample earlier, or raise the budget",
            index=index, layer_type=layer_type, needed=fp.per_sample * factor)
    return max(1, max_bytes // (fp.per_sample * factor))


def training_batch(resolved: list[dict], *, input_shape, max_bytes: int) -> int:
    """The largest training batch_size whose activations (TRAINING_FACTOR × forward, per image) fit `max_bytes`."""
    return forward_batch(resolved, input_shape=input_shape, max_bytes=max_bytes, factor=TRAINING_FACTOR)
