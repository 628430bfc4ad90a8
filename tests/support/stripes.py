"""A tiny in-memory image set with a wide margin between classes, for the training loop's tests."""

import torch


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 1×12×12 images whose label (0..3) is the bright horizontal band: separable by a wide margin."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 1, 12, 12), generator=generator, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, label * 3 : label * 3 + 3] += 180
    return images, labels


TRAIN, TEST = stripes(256, seed=1), stripes(200, seed=2)
