"""The tile grid: output blocks partition the image, inputs lie on the stride grid, sizes valid."""

import numpy as np
import pytest

from training.geometry import InvalidSizeError, TileGeometry
from training.inference.tiling import TileGrid, axis_tile

PAPER = TileGeometry(padding="valid", depth=4)
SAME = TileGeometry(padding="same", depth=5, halo=64, kind="stride")


def coverage(grid: TileGrid, region=None) -> np.ndarray:
    counts = np.zeros((grid.height, grid.width), np.int32)
    for tile in grid.tiles(region):
        y0, y1, x0, x1 = tile.output
        counts[y0:y1, x0:x1] += 1
    return counts


@pytest.mark.parametrize("geometry,tile", [(PAPER, 572), (PAPER, 508), (SAME, 512), (SAME, 256)])
@pytest.mark.parametrize("shape", [(1000, 777), (3, 5), (1, 1), (2048, 2048)])
def test_outputs_partition_the_image_once(geometry, tile, shape):
    grid = TileGrid.plan(geometry, *shape, tile)
    assert coverage(grid).min() == 1 and coverage(grid).max() == 1
    assert len(list(grid.tiles())) == len(grid) == grid.rows * grid.cols


@pytest.mark.parametrize("geometry,tile", [(PAPER, 572), (SAME, 512)])
def test_windows_on_the_stride_grid_of_the_whole_image_window(geometry, tile):
    grid = TileGrid.plan(geometry, 3000, 2500, tile)
    (wy0, _, wx0, _), offset = grid.whole_window()
    assert (wy0, wx0) == (-geometry.context, -geometry.context)
    for t in grid.tiles():
        y0, y1, x0, x1 = t.window
        assert (y0 - wy0) % geometry.stride == 0 and (x0 - wx0) % geometry.stride == 0
        assert (y1 - y0, x1 - x0) == (grid.tile_h, grid.tile_w)
        assert geometry.is_valid_input(y1 - y0) and geometry.is_valid_input(x1 - x0)
        # the kept block sits inside the model output, context - margin pixels in
        model_out_top = y0 + geometry.margin
        assert t.output[0] - model_out_top == t.crop[0] >= geometry.context - geometry.margin
        assert t.crop[0] + (t.output[1] - t.output[0]) <= geometry.output_size(grid.tile_h) - (geometry.context - geometry.margin)


def test_paper_step_is_384_for_572_inputs():
    grid = TileGrid.plan(PAPER, 1000, 1000, 572)
    assert (grid.step_h, grid.step_w) == (384, 384)
    assert [t.output for t in grid.tiles()][:3] == [(0, 384, 0, 384), (0, 384, 384, 768), (0, 384, 768, 1000)]
    assert next(iter(grid.tiles())).window == (-92, 480, -92, 480)


def test_small_images_get_the_smallest_covering_tile():
    # 188 is the smallest valid input, but its 4 px output is below one stride: no usable step
    assert axis_tile(PAPER, 572, 1) == 204 and PAPER.tile_step(204) == 16
    assert axis_tile(PAPER, 572, 100) == 300 and PAPER.tile_step(300) == 112  # 7 strides
    assert PAPER.tile_step(axis_tile(PAPER, 572, 100)) >= 100
    assert axis_tile(PAPER, 572, 5000) == 572
    grid = TileGrid.plan(PAPER, 3, 5000, 572)
    assert (grid.tile_h, grid.tile_w, grid.rows) == (204, 572, 1)


def test_region_tiles_are_the_whole_grid_tiles_clipped():
    grid = TileGrid.plan(PAPER, 1500, 1300, 572)
    region = (100, 900, 390, 1299)
    counts = coverage(grid, region)
    assert counts[100:900, 390:1299].min() == 1 and counts.sum() == 800 * 909
    whole = {(t.row, t.col): t for t in grid.tiles()}
    for t in grid.tiles(region):
        assert t.window == whole[(t.row, t.col)].window


def test_invalid_requests_are_refused_with_valid_sizes_named():
    with pytest.raises(InvalidSizeError, match="nearest: .*572"):
        TileGrid.plan(PAPER, 100, 100, 570)
    with pytest.raises(InvalidSizeError, match="no usable output"):
        TileGrid.plan(TileGeometry(padding="same", depth=5, halo=256, kind="stride"), 100, 100, 512)
    with pytest.raises(ValueError, match="no pixels"):
        TileGrid.plan(PAPER, 0, 10, 572)
    with pytest.raises(ValueError, match="region"):
        list(TileGrid.plan(PAPER, 10, 10, 572).tiles((0, 11, 0, 5)))


@pytest.mark.parametrize("geometry,tile", [(PAPER, 572), (SAME, 256)])
@pytest.mark.parametrize("shape", [(1000, 777), (3, 5), (1, 1)])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_overlapping_grid_covers_the_image_on_the_stride_grid(geometry, tile, shape, overlap):
    """Blending grid: spans of the tile's whole usable output, starts a stride multiple apart."""
    grid = TileGrid.plan(geometry, *shape, tile, overlap=overlap)
    usable = geometry.output_size(grid.tile_h) - 2 * (geometry.context - geometry.margin)
    assert grid.span_h == usable and grid.step_h % geometry.stride == 0
    assert grid.step_h <= max(geometry.stride, (1 - overlap) * usable)
    assert coverage(grid).min() >= 1 and len(list(grid.tiles())) == len(grid)
    (wy0, _, wx0, _), _ = grid.whole_window()
    for t in grid.tiles():
        assert (t.window[0] - wy0) % geometry.stride == 0 and (t.window[2] - wx0) % geometry.stride == 0
        assert t.crop[0] >= geometry.context - geometry.margin
        assert t.crop[0] + t.output[1] - t.output[0] <= geometry.output_size(grid.tile_h) - (geometry.context - geometry.margin)
    last = grid.tile(grid.rows - 1, 0)
    assert last.output[1] == shape[0] and (grid.rows - 1) * grid.step_h < shape[0]  # no tile wasted


def test_overlapping_grid_regions_and_counts():
    grid = TileGrid.plan(PAPER, 1500, 1300, 572, overlap=0.25)
    assert (grid.span_h, grid.step_h) == (388, 288)
    assert [t.output[:2] for t in grid.tiles() if t.col == 0][:3] == [(0, 388), (288, 676), (576, 964)]
    assert coverage(grid)[300, 300] == 4 and coverage(grid)[100, 100] == 1
    region = (300, 900, 390, 1299)
    inside, whole = coverage(grid, region), coverage(grid)[300:900, 390:1299]
    assert np.array_equal(inside[300:900, 390:1299], whole) and inside.sum() == whole.sum()
    assert TileGrid.plan(PAPER, 1500, 1300, 572, overlap=0.0) == TileGrid.plan(PAPER, 1500, 1300, 572)
    with pytest.raises(ValueError, match="overlap"):
        TileGrid.plan(PAPER, 10, 10, 572, overlap=1.0)
