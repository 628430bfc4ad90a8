"""The PNG figures decode, place tiles and cells where a viewer expects them, and show their labels."""

import io

import pytest
import torch
from PIL import Image, ImageChops

from app.analysis.plots import heatmap_png, to_uint8_maps, viridis
from app.datasets.images import grid_png


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGB")


def luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ink(image: Image.Image) -> int:
    """Number of near-black pixels: text, since no colour of the figures is that dark."""
    return sum(1 for r, g, b in image.getdata() if r + g + b < 100)


def constant_tiles(count: int, channels: int) -> torch.Tensor:
    colours = torch.arange(count, dtype=torch.uint8) * 30 + 10
    tiles = colours.reshape(count, 1, 1, 1).expand(count, channels, 5, 4).clone()
    if channels == 3:
        tiles[:, 1] = 255 - tiles[:, 1]
    return tiles


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_puts_tile_i_in_row_i_div_ncols_and_column_i_mod_ncols(channels):
    tiles, ncols, scale, pad = constant_tiles(7, channels), 3, 3, 2
    image = decode(grid_png(tiles, ncols=ncols, scale=scale, pad=pad))
    step_w, step_h = 4 * scale + pad, 5 * scale + pad
    assert image.height == pad + 3 * step_h
    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncols)
        x = image.width - (ncols - col) * step_w + (4 * scale) // 2
        y = pad + row * step_h + (5 * scale) // 2
        expected = tuple(int(v) for v in tile[:, 0, 0]) * (3 if channels == 1 else 1)
        assert image.getpixel((x, y)) == expected


def test_grid_grows_wider_with_more_columns():
    tiles = constant_tiles(8, 1)
    narrow, wide = (decode(grid_png(tiles, ncols=n)) for n in (2, 4))
    assert wide.width > narrow.width and wide.height < narrow.height


def test_grid_scales_tiles_by_nearest_neighbour():
    tile = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8).unsqueeze(0)
    image = decode(grid_png(tile, ncols=1, scale=4, pad=0))
    assert image.size == (8, 8)
    assert image.getpixel((3, 3)) == (0, 0, 0) and image.getpixel((4, 3)) == (255, 255, 255)


def test_grid_refuses_tiles_it_cannot_draw():
    with pytest.raises(ValueError, match="uint8"):
        grid_png(torch.zeros(2, 1, 3, 3), ncols=2)
    with pytest.raises(ValueError, match="C 1 or 3"):
        grid_png(torch.zeros(2, 2, 3, 3, dtype=torch.uint8), ncols=2)
    with pytest.raises(ValueError, match="N >= 1"):
        grid_png(torch.zeros(0, 1, 3, 3, dtype=torch.uint8), ncols=2)


def test_maps_are_stretched_each_to_its_own_range():
    maps = torch.stack([torch.linspace(-5, 5, 12).reshape(3, 4), torch.linspace(0, 1e-3, 12).reshape(3, 4)])
    maps = torch.cat([maps, torch.full((1, 3, 4), 7.0)])
    tiles = to_uint8_maps(maps)
    assert tiles.dtype == torch.uint8 and tiles.shape == (3, 1, 3, 4)
    for tile in tiles[:2]:
        assert tile.min() == 0 and tile.max() == 255
    assert set(tiles[2].flatten().tolist()) <= {127, 128}
    assert to_uint8_maps(torch.arange(6.0)).shape == (1, 1, 1, 6)


def test_heatmap_cells_follow_the_matrix_and_darken_with_lower_values():
    values = [[0.1, 0.4], [0.7, 1.0]]
    flipped = [[1 - v for v in row] for row in values]
    labels = dict(row_labels=["a", "b"], col_labels=["a", "b"], title="t")
    image, other = decode(heatmap_png(values, **labels)), decode(heatmap_png(flipped, **labels))
    assert image.mode == "RGB" and image.size == other.size
    # Only the cells differ between the two renders, so the difference outlines the grid.
    left, top, right, bottom = ImageChops.difference(image, other).getbbox()
    cell_w, cell_h = (right - left) // 2, (bottom - top) // 2
    assert cell_w == cell_h
    centres = [(left + c * cell_w + cell_w // 2, top + r * cell_h + cell_h // 2) for r in (0, 1) for c in (0, 1)]
    colours = [image.getpixel(centre) for centre in centres]
    assert colours == [viridis(v) for row in values for v in row]
    assert [luminance(c) for c in colours] == sorted(luminance(c) for c in colours)


def test_heatmap_shows_its_labels_title_and_a_full_colour_bar():
    matrix = [[0.5, 0.5, 0.5]] * 2
    bare = decode(heatmap_png(matrix, row_labels=["", ""], col_labels=["", "", ""], title=""))
    labelled = decode(heatmap_png(matrix, row_labels=["0:Conv2d", "1:ReLU"], col_labels=["x", "y", "z"], title=""))
    titled = decode(heatmap_png(matrix, row_labels=["", ""], col_labels=["", "", ""], title="CKA"))
    assert ink(labelled) > ink(bare) and ink(titled) > ink(bare)
    assert labelled.width > bare.width and labelled.height > bare.height
    pixels = set(bare.getdata())
    assert viridis(0.0) in pixels and viridis(1.0) in pixels


def test_heatmap_carries_its_title_as_png_text_and_a_grid_none():
    heatmap = Image.open(io.BytesIO(heatmap_png([[0.5]], row_labels=["a"], col_labels=["b"], title="CKA (linear): v1")))
    assert heatmap.text == {"Title": "CKA (linear): v1"}
    grid = Image.open(io.BytesIO(grid_png(constant_tiles(2, 1), ncols=2)))
    assert grid.text == {}


@pytest.mark.parametrize("size", [1, 13, 40])
def test_heatmap_draws_any_size_from_one_cell_to_forty(size):
    matrix = [[(r * c) % 7 / 6 for c in range(size)] for r in range(size)]
    matrix[0][0] = float("nan")
    labels = [f"{i}:BatchNorm2d" for i in range(size)]
    image = decode(heatmap_png(matrix, row_labels=labels, col_labels=labels, title="layers"))
    assert 40 < image.width < 1000 and 40 < image.height < 1000


def test_heatmap_refuses_a_matrix_that_does_not_fit_its_labels():
    with pytest.raises(ValueError, match="equally long"):
        heatmap_png([[0.1, 0.2], [0.3]], row_labels=["a", "b"], col_labels=["a", "b"], title="")
    with pytest.raises(ValueError, match="labels"):
        heatmap_png([[0.1, 0.2]], row_labels=["a"], col_labels=["a"], title="")


def test_viridis_runs_from_dark_purple_to_bright_yellow():
    assert viridis(0.0) == (68, 1, 84) and viridis(1.0) == (253, 231, 37)
    assert viridis(-3.0) == viridis(0.0) and viridis(9.0) == viridis(1.0)
    steps = [luminance(viridis(i / 50)) for i in range(51)]
    assert steps == sorted(steps)
