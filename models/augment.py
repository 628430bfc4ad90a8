"""Data augmentation of training batches: random shift (edge-padded), horizontal flip and cutout, on the device.

An epoch's draws are made at its start, one set per sample of the split, from the job's augmentation generator;
a batch then gathers the draws of its samples. So a sample's augmentation depends on the generator's state at the
epoch's start only (a resumed run draws them again from the saved state) and a batch is augmented by a few
tensor ops, with no per-sample Python and no random draw inside the training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STREAM = 0x5C5A_0A06_A7E5_0001  # mixed into the job's seed: augmentation draws a stream apart from shuffling's
Draws = dict[str, torch.Tensor]  # one tensor per kind of draw, a row per sample


@dataclass(frozen=True)
class Augment:
    """What to draw per sample and epoch: a shift of up to `shift` pixels each way, a flip with probability ½,
    one `cutout`×`cutout` square (centre anywhere in the image, clipped at its edges) set to the mean image."""

    shift: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(self.shift or self.flip or self.cutout)


def generator(seed: int, device: torch.device) -> torch.Generator:
    """The job's augmentation generator, on the training device."""
    return torch.Generator(device=device).manual_seed(seed ^ STREAM)


def draw(augment: Augment, *, n: int, height: int, width: int, generator: torch.Generator) -> Draws:
    """One epoch's draws for `n` samples, on the generator's device: only those the recipe uses, in a fixed order."""
    device = generator.device
    draws = {}
    if augment.shift:
        s = augment.shift
        draws["dy"] = torch.randint(-s, s + 1, (n,), generator=generator, device=device)
        draws["dx"] = torch.randint(-s, s + 1, (n,), generator=generator, device=device)
    if augment.flip:
        draws["flip"] = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    if augment.cutout:
        draws["cy"] = torch.randint(0, height, (n,), generator=generator, device=device)
        draws["cx"] = torch.randint(0, width, (n,), generator=generator, device=device)
    return draws


def apply(images: torch.Tensor, draws: Draws, *, cutout: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch (N×C×H×W) shifted and flipped as `draws` (this batch's rows) say, and its cutout mask (N×1×H×W,
    True where a pixel is erased; None without cutout). Pixels shifted in repeat the image's edge."""
    n, _, height, width = images.shape
    y = torch.arange(height, device=images.device).expand(n, height)
    x = torch.arange(width, device=images.device).expand(n, width)
    if "dy" in draws or "flip" in draws:
        rows, cols = y, x  # the source pixel of each output pixel: flipped, then shifted by (dy, dx)
        if "dy" in draws:
            rows = (rows - draws["dy"][:, None]).clamp(0, height - 1)
            cols = (cols - draws["dx"][:, None]).clamp(0, width - 1)
        if "flip" in draws:
            cols = torch.where(draws["flip"][:, None], width - 1 - cols, cols)
        images = images.gather(2, rows[:, None, :, None].expand_as(images))
        images = images.gather(3, cols[:, None, None, :].expand_as(images))
    if "cy" not in draws:
        return images, None
    top, left = draws["cy"][:, None] - cutout // 2, draws["cx"][:, None] - cutout // 2
    in_rows, in_cols = (y >= top) & (y < top + cutout), (x >= left) & (x < left + cutout)
    return images, (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
