"""Small PNGs inlined in dashboard pages: dataset images, and activation maps on a diverging map centred on zero."""

import base64
import io

import numpy as np
import torch
from PIL import Image

# ColorBrewer RdBu (5 classes, reversed): blue below zero, near-white at zero, red above; safe for colour-blindness.
DIVERGING = np.array([(5, 113, 176), (146, 197, 222), (247, 247, 247), (244, 165, 130), (202, 0, 32)], dtype=float)


def _data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_png(image: torch.Tensor) -> str:
    """A uint8 C×H×W image (1 or 3 channels) as a PNG data URI."""
    array = image.numpy()
    return _data_uri(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def symmetric_scale(maps: torch.Tensor) -> float:
    """The largest |value| of a layer's maps: every channel shares one scale, so they can be compared."""
    return float(torch.nan_to_num(maps.detach().abs()).max()) or 1.0


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Float values in [-scale, scale] → uint8 RGB on DIVERGING, zero at its centre."""
    position = (np.clip(values / scale, -1.0, 1.0) + 1.0) / 2.0 * (len(DIVERGING) - 1)
    low = np.minimum(position.astype(int), len(DIVERGING) - 2)
    t = (position - low)[..., None]
    return np.round(DIVERGING[low] * (1 - t) + DIVERGING[low + 1] * t).astype(np.uint8)


def activation_pngs(maps: torch.Tensor, scale: float) -> list[str]:
    """Each channel of C×H×W float maps as a PNG data URI on the diverging map."""
    values = torch.nan_to_num(maps.detach().to(torch.float64)).numpy()
    return [_data_uri(diverging(channel, scale)) for channel in values]
