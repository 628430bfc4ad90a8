"""PNG figures drawn with Pillow alone: labelled heatmaps, and activation maps as tiles for image grids."""

import io
import math

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

# Viridis sampled at eight evenly spaced points: perceptually uniform, and its luminance rises
# monotonically, so the figure still reads in greyscale and for colour-blind viewers.
_VIRIDIS = ((68, 1, 84), (70, 51, 126), (54, 92, 141), (39, 127, 142), (31, 161, 135), (74, 193, 109),
            (159, 218, 58), (253, 231, 37))
_NAN_COLOUR = (160, 160, 160)
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_MARGIN = 8
_GAP = 4
_BAR_WIDTH = 14


def viridis(fraction: float) -> tuple[int, int, int]:
    """Colour of `fraction` (clipped to [0, 1]) on the viridis colormap."""
    position = min(max(fraction, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(position), len(_VIRIDIS) - 2)
    t = position - low
    return tuple(round(a + (b - a) * t) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1], strict=True))


def heatmap_png(matrix: list[list[float]], *, row_labels: list[str], col_labels: list[str], title: str,
                vmin: float = 0.0, vmax: float = 1.0) -> bytes:
    """A labelled heatmap of `matrix`: square cells, axis labels, a colour bar and a title.

    The title is also stored as the PNG's `Title` text chunk, for programs that read the file.
    """
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    if rows == 0 or cols == 0 or any(len(row) != cols for row in matrix):
        raise ValueError("matrix must be a non-empty list of equally long rows")
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"{rows}×{cols} matrix needs {rows} row labels and {cols} column labels, "
                         f"got {len(row_labels)} and {len(col_labels)}")
    # Cells shrink as the matrix grows so a 40-layer model still fits on a screen.
    cell = max(12, min(40, 480 // max(rows, cols)))
    font = ImageFont.load_default(size=max(8, min(12, cell - 2)))
    title_font = ImageFont.load_default(size=14)
    ticks = (f"{vmax:.3g}", f"{vmin:.3g}")

    # Column labels are written bottom to top, ending at the grid, so neighbours never overlap.
    col_label_images = [_text_image(font, label).rotate(90, expand=True) for label in col_labels]
    row_label_width = max(_text_width(font, label) for label in row_labels)
    col_label_height = max(upright.height for upright in col_label_images)
    tick_width = max(_text_width(font, tick) for tick in ticks)
    grid_left = _MARGIN + row_label_width + _GAP
    grid_top = _MARGIN + title_font.size + 2 * _GAP
    grid_width, grid_height = cols * cell, rows * cell
    bar_left = grid_left + grid_width + 3 * _GAP
    width = max(bar_left + _BAR_WIDTH + _GAP + tick_width + _MARGIN, _text_width(title_font, title) + 2 * _MARGIN)
    height = grid_top + grid_height + _GAP + col_label_height + _MARGIN

    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, _MARGIN), title, fill=_INK, font=title_font, anchor="mt")
    span = vmax - vmin if vmax != vmin else 1.0
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            colour = _NAN_COLOUR if math.isnan(value) else viridis((value - vmin) / span)
            x, y = grid_left + c * cell, grid_top + r * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
    for r, label in enumerate(row_labels):
        draw.text((grid_left - _GAP, grid_top + r * cell + cell // 2), label, fill=_INK, font=font, anchor="rm")
    for c, upright in enumerate(col_label_images):
        x = grid_left + c * cell + (cell - upright.width) // 2
        image.paste(_INK, (x, grid_top + grid_height + _GAP), mask=upright)
    for y in range(grid_height):
        colour = viridis(1 - y / max(grid_height - 1, 1))
        draw.line((bar_left, grid_top + y, bar_left + _BAR_WIDTH - 1, grid_top + y), fill=colour)
    tick_left = bar_left + _BAR_WIDTH + _GAP
    draw.text((tick_left, grid_top), ticks[0], fill=_INK, font=font, anchor="lt")
    draw.text((tick_left, grid_top + grid_height), ticks[1], fill=_INK, font=font, anchor="lb")
    buffer, info = io.BytesIO(), PngInfo()
    if title:
        info.add_itxt("Title", title)  # iTXt: UTF-8, so any version name survives
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def to_uint8_maps(maps: Tensor) -> Tensor:
    """Float feature maps C×H×W as uint8 tiles C×1×H×W, each stretched to its own min..max.

    A constant map becomes mid-grey. A flat vector (F) becomes one 1×F strip, scaled as a whole.
    """
    if maps.dim() == 1:
        maps = maps.reshape(1, 1, -1)
    elif maps.dim() == 2:
        maps = maps.unsqueeze(0)
    elif maps.dim() != 3:
        raise ValueError(f"expected feature maps C×H×W, H×W or F, got shape {tuple(maps.shape)}")
    flat = torch.nan_to_num(maps.detach().to(torch.float64)).reshape(maps.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    spread = flat.amax(dim=1, keepdim=True) - low
    scaled = torch.where(spread > 0, (flat - low) / spread.clamp(min=1e-300) * 255, 127.5)
    return scaled.round().to(torch.uint8).reshape(maps.shape[0], 1, *maps.shape[1:]).cpu()


def _text_width(font: ImageFont.FreeTypeFont, text: str) -> int:
    return math.ceil(font.getlength(text)) if text else 0


def _text_image(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    """`text` drawn white on black, as a mask for pasting in any orientation."""
    _, _, right, bottom = font.getbbox(text or " ")
    mask = Image.new("L", (max(right, 1), max(bottom, 1)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    return mask
