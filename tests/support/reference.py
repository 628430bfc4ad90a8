"""An independent float64 reference for CKA, written from the formulas and never calling `app.analysis`: float32
forward passes, everything after them in float64."""

import torch
from torch import nn


def outputs(model: nn.Sequential, images: torch.Tensor, norm: dict) -> list[torch.Tensor]:
    mean = torch.tensor(norm["mean"]).view(-1, 1, 1)
    std = torch.tensor(norm["std"]).view(-1, 1, 1)
    x, found = (images.float() / 255 - mean) / std, []
    with torch.no_grad():
        for module in model:
            x = module(x)
            found.append(x.reshape(len(x), -1).double())  # a copy: a following in-place ReLU rewrites x
    return found


def unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """HSIC_1 of Song et al. 2012 on uncentred Gram matrices."""
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)  # noqa: E741
    ones = torch.ones(n, dtype=torch.float64)
    value = torch.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    return float((value - 2 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3)))


def reference(images: torch.Tensor, nets: list[tuple[nn.Sequential, dict]], batch_size: int) -> torch.Tensor:
    """Minibatch CKA between every pair of layers of all `nets`, as a float64 layers × layers matrix."""
    sums, batches = None, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if len(batch) < 4:
            continue
        grams = [x @ x.T for net, norm in nets for x in outputs(net, batch, norm)]
        hsic = torch.tensor([[unbiased_hsic(k, l) for l in grams] for k in grams], dtype=torch.float64)  # noqa: E741
        sums = hsic if sums is None else sums + hsic
        batches += 1
    means = sums / batches
    return means / torch.sqrt(torch.outer(means.diagonal(), means.diagonal()))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of Kornblith et al. 2019 (biased HSIC) between two float64 n × features representations."""
    xc, yc = x - x.mean(dim=0), y - y.mean(dim=0)
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    return float(cross / (torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)))
