"""Evaluation: uint8 images normalised into a network's input, its outputs, and its loss and accuracy on a split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models.precision import autocast, memory_format


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N×C×H×W → the network's float input, (x / 255 - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    return (batch.float() / 255 - mean) / std


def logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    device: str | torch.device,
    precision: str = "fp32",
    batch_size: int = 256,
) -> torch.Tensor:
    """Float32 outputs, on `device`, of a model already there (in eval mode) for uint8 images, at `precision`.

    The fast path of evaluation and prediction: batches go in `memory_format(model)`, so convert the model
    once with `model.to(memory_format=memory_format(model))` for full speed (results are the same without).
    """
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    layout = memory_format(model)
    outputs = []
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean_t, std_t)
            outputs.append(model(x.contiguous(memory_format=layout)).float())
    return torch.cat(outputs)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    device: str | torch.device,
    precision: str = "fp32",
    batch_size: int = 256,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model (moved to `device`) on uint8 images."""
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    model.to(device).eval()
    output = logits(model, images, mean=mean, std=std, device=device, precision=precision, batch_size=batch_size)
    labels = labels.to(output.device)
    loss = F.cross_entropy(output, labels, reduction="sum")
    return loss.item() / len(images), (output.argmax(1) == labels).sum().item() / len(images)
