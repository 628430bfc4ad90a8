"""The validation split: a seeded, stratified share of the training split held out from training."""

from __future__ import annotations

import math

import torch

STREAM = 0x5C5A_5B11_7000_0001  # mixed into the job's seed: the split draws a stream of its own


def validation_split(labels: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (ascending) of the samples kept for training and of those held out: of each class, a seeded
    random `fraction` of its samples, rounded half down (a class of one sample stays in training)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"validation_split {fraction} is outside (0, 0.5]")
    generator = torch.Generator().manual_seed(seed ^ STREAM)
    labels = labels.cpu()
    held = []
    for label in torch.unique(labels).tolist():  # ascending: the draws come in a fixed order
        members = (labels == label).nonzero().flatten()
        count = math.ceil(fraction * len(members) - 0.5)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    out = torch.zeros(len(labels), dtype=torch.bool)
    out[torch.cat(held)] = True
    if not out.any():
        raise ValueError(f"validation_split {fraction} of {len(labels)} training images holds out none; "
                         "ask for a larger split or train on more images")
    return (~out).nonzero().flatten(), out.nonzero().flatten()
