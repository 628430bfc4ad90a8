"""Every layer's output of a Sequential model, recorded apart from the analysis code: what CKA tests compare with."""

import torch
from torch import Tensor, nn

from app.analysis.maths import layer_names


def record_layers(model: nn.Sequential, x: Tensor) -> list[tuple[str, Tensor]]:
    """Outputs of every top-level module of `model` (in eval mode, without gradients) for input `x`, named
    "index:ClassName"; the model's own mode is restored after."""
    was_training, outputs, out = model.training, [], x
    model.eval()
    try:
        with torch.no_grad():
            for name, module in zip(layer_names(model), model, strict=True):
                out = module(out)
                # A copy each, because a following in-place module (ReLU(inplace=True)) rewrites the original.
                outputs.append((name, out.clone()))
    finally:
        model.train(was_training)
    return outputs
