"""Image bytes in and out: PNG grids of uint8 tensors, and guarded decoding of uploaded PNG/JPEG."""

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidInput

FORMATS = ("PNG", "JPEG")
PAD_VALUE = 128  # mid-grey gaps stay visible between black-background (MNIST) and white images alike


def grid_png(images: torch.Tensor, *, ncols: int, scale: int = 2, pad: int = 2) -> bytes:
    """A PNG of N×C×H×W uint8 images (C = 1 or 3) in rows of `ncols`, each pixel `scale`× wide, `pad` apart."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must be uint8 N×C×H×W with N >= 1 and C 1 or 3, got {images.dtype} "
                         f"{list(images.shape)}")
    from torchvision.utils import make_grid  # torchvision takes seconds to import: only when a grid is drawn

    big = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(big, nrow=max(1, ncols), padding=pad, pad_value=PAD_VALUE)
    if len(images) == 1:  # make_grid returns a lone image unpadded
        grid = torch.nn.functional.pad(grid, (pad,) * 4, value=PAD_VALUE)
    array = grid.permute(1, 2, 0).cpu().numpy()  # make_grid draws greyscale as three equal channels
    out = io.BytesIO()
    Image.fromarray(array[..., 0] if images.shape[1] == 1 else array).save(out, format="PNG")
    return out.getvalue()


def decode_image(data: bytes, *, max_pixels: int) -> torch.Tensor:
    """A PNG or JPEG as uint8 C×H×W (1 channel for greyscale, else RGB); InvalidInput when it is not one."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check is a warning below 2× its global limit; ours is an error instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            # The header alone gives the size: refuse before decoding a single pixel.
            if img.width * img.height > max_pixels:
                raise InvalidInput(f"image of {img.width}×{img.height} pixels exceeds the limit of "
                                   f"{max_pixels} pixels", field="images")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"not a decodable PNG or JPEG image ({type(exc).__name__}: {exc})",
                           field="images") from None
    if img.mode.startswith("I"):
        # 16-bit greyscale PNG: Pillow's convert("L") would clip everything above 255 to white.
        array = np.clip(np.asarray(img).astype(np.int64) // 257, 0, 255).astype(np.uint8)
    else:
        if img.mode not in ("L", "RGB"):
            grey = img.mode in ("1", "LA") or (img.mode == "P" and _grey_palette(img))
            img = img.convert("L" if grey else "RGB")
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).unsqueeze(0) if array.ndim == 2 else \
        torch.from_numpy(array.transpose(2, 0, 1).copy())


def _grey_palette(img: Image.Image) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())
