"""Running a Sequential for analysis: eval mode, each module's output in turn, and how many samples fit a budget."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

FLOAT32, FLOAT64 = 4, 8
Width = tuple[str, int, int]  # a layer's name, and the values per sample of its input and of its output


class AnalysisInputError(ValueError):
    """A layer, channel, sample or tensor that the analysis cannot work on; `field` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def layer_names(model: nn.Sequential) -> list[str]:
    """The names CKA matrices and activations use for the model's modules: "index:ClassName"."""
    return [f"{index}:{type(module).__name__}" for index, module in enumerate(model)]


def layer_widths(model: nn.Sequential, sample: Tensor, *, upto: int | None = None) -> list[Width]:
    """(name, input values, output values) per sample of every layer (up to layer `upto`), from one normalised
    sample (1×C×H×W)."""
    widths, before = [], sample[0].numel()
    with _evaluating(model):
        for name, out in _layer_outputs(model, sample):
            widths.append((name, before, out[0].numel()))
            if upto is not None and len(widths) > upto:
                break
            before = out[0].numel()
    return widths


def sample_bytes(widths: Sequence[Width], *, per_output: int, max_bytes: int, beside: int = 0) -> int:
    """The bytes one sample needs at its costliest layer: its float32 input, alive while the layer runs, and
    `per_output` bytes per output value. AnalysisInputError names the layer when that, with `beside` bytes that
    the analysis holds whatever the samples, exceeds `max_bytes`."""
    name, worst = max(((name, FLOAT32 * before + per_output * out) for name, before, out in widths),
                      key=lambda width: width[1])
    if worst + beside > max_bytes:
        held = f" beside the {beside:,} bytes of its Gram matrices" if beside else ""
        raise AnalysisInputError(
            f"layer {name}: one image needs {worst:,} bytes{held}, more than the budget of {max_bytes:,} bytes "
            "(SCV_ANALYSIS_MAX_BYTES) — raise the budget, or analyse a narrower network"
        )
    return worst


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


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
