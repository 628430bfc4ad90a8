"""The training loop: seeded, shuffled mini-batch training and evaluation on uint8 image tensors, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.layers import build_sequential

Progress = Callable[[dict[str, Any]], None]
_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    eval_batch_size: int = 256  # on CPU, 1024-image activations (100 MB) cost 1.7x the time


def pick_device(setting: str) -> str:
    """Turn a device setting (cpu, cuda, cuda:N, auto) into a device this machine has."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but torch finds no CUDA GPU; use 'cpu' or 'auto'")
    if setting != "cpu" and not setting.startswith("cuda"):
        raise ValueError(f"unknown device {setting!r}; use 'cpu', 'cuda' or 'auto'")
    return setting


def seeded_model(layers: list[dict], *, seed: int) -> nn.Sequential:
    """Build the Sequential with weights drawn from `seed`, so a run can be repeated bit for bit."""
    torch.manual_seed(seed)
    return build_sequential(layers)


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N×C×H×W → the network's float input, (x / 255 - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    return (batch.float() / 255 - mean) / std


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    device: str | torch.device,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model (moved to `device`) on uint8 images."""
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    model.to(device).eval()
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean_t, std_t)
            y = labels[start : start + batch_size].to(device)
            output = model(x)
            loss_sum += F.cross_entropy(output, y, reduction="sum")
            correct += (output.argmax(1) == y).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params, lr, decay = model.parameters(), config.learning_rate, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use one of {', '.join(_OPTIMIZERS)}")


def train(
    model: nn.Module,
    *,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    config: TrainConfig,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Train in place, evaluating after each epoch; returns the last epoch's metrics and the history.

    Images are uint8 N×C×H×W, labels int64. `on_progress` gets a dict after every optimizer step and,
    with an "epoch_done" entry, after each epoch's evaluation; an exception it raises stops training.
    For bit-identical weights, build the model with `seeded_model(layers, seed=config.seed)` and keep
    data, config, device and torch's thread count the same. A last batch of a single image is skipped:
    BatchNorm cannot train on one sample. The model is left on the CPU, in eval mode.
    """
    device = torch.device(pick_device(config.device))
    if len(train_images) == 0 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("training needs images, epochs >= 1 and batch_size >= 1")
    if device.type == "cuda":  # deterministic kernels cost little for these small networks
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(config.seed)  # dropout draws from the global generators
    shuffler = torch.Generator().manual_seed(config.seed)  # its own, so shuffling is the same on any device
    # the uint8 splits are small; keeping them on the device saves a host copy per batch
    train_images, train_labels = train_images.to(device), train_labels.to(device, torch.int64)
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    n, size = len(train_images), config.batch_size
    steps = math.ceil(n / size) - (1 if n > size and n % size == 1 else 0)
    total = config.epochs * steps
    history: list[dict[str, float]] = []
    try:
        model.to(device)
        optimizer = _optimizer(model, config)
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=shuffler).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for step in range(1, steps + 1):
                index = order[(step - 1) * size : step * size]
                x = normalize(train_images[index], mean_t, std_t)
                y = train_labels[index]
                optimizer.zero_grad(set_to_none=True)
                output = model(x)
                loss = F.cross_entropy(output, y)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(index)
                correct += (output.detach().argmax(1) == y).sum()
                seen += len(index)
                if on_progress is not None:
                    progress = {"epoch": epoch, "epochs": config.epochs, "step": step, "steps": steps,
                                "fraction": ((epoch - 1) * steps + step) / total,
                                "train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen}
                    on_progress(progress)
            test_loss, test_accuracy = evaluate(model, test_images, test_labels, mean=mean_t, std=std_t,
                                                device=device, batch_size=config.eval_batch_size)
            record = {"epoch": epoch, "train_loss": loss_sum.item() / seen,
                      "train_accuracy": correct.item() / seen, "test_loss": test_loss,
                      "test_accuracy": test_accuracy}
            history.append(record)
            if on_progress is not None:
                on_progress({**progress, "epoch_done": record})
    finally:
        model.cpu()
    metrics = {key: value for key, value in history[-1].items() if key != "epoch"}
    return {"metrics": metrics, "history": history}
