"""The image-aware tile choice: measured speed per output pixel and the grid's fit to the image."""

from __future__ import annotations

import pytest

from training.geometry import TileGeometry
from training.inference.tilefit import fit_tile, fitted_sizes, grid_seconds, interpolated_throughput
from training.inference.tiling import TileGrid

VALID = TileGeometry(padding="valid", depth=4)  # margin 92: 700 -> step 512, 780 -> step 592
SAME = TileGeometry(padding="same", depth=5, halo=64, kind="stride")  # 512 -> step 384, 768 -> 640


def test_a_faster_tile_per_pixel_loses_when_the_grid_wastes_it():
    """780 px is 10% faster per output pixel, but on 2048² it needs the same 4 x 4 grid as 700 px
    and computes 592² per tile instead of 512²: 700 wins. On 2368² (4 x 592) 780 wins."""
    assert VALID.tile_step(700) == 512 and VALID.tile_step(780) == 592
    rates = {700: 1.0e6, 780: 1.1e6}
    fit = fit_tile(VALID, rates, 2048, 2048)
    assert fit.size == 700 and fit.tiles == {700: 16, 780: 16}
    assert fit.seconds[700] == pytest.approx(16 * 512**2 / 1.0e6)
    assert fit.seconds[780] == pytest.approx(16 * 592**2 / 1.1e6)
    wide = fit_tile(VALID, rates, 2368, 2368)
    assert wide.size == 780 and wide.tiles == {700: 25, 780: 16}


def test_same_padding_halo_makes_small_tiles_waste_more():
    """With a 64 px halo a 512 px tile keeps 384 px: on 2048² 6 x 6 tiles against 4 x 4 of 768 px.
    At equal speed per output pixel 512 beats 768 (fewer pixels past the edge); 30% faster 768
    wins. Between them, 640 (step 512) fits 2048² exactly with 4 x 4 tiles and beats both."""
    equal = fit_tile(SAME, {512: 1e6, 768: 1e6}, 2048, 2048)
    assert (equal.tiles[512], equal.tiles[768]) == (36, 16) and equal.seconds[512] < equal.seconds[768]
    assert equal.seconds[512] == pytest.approx(36 * 384**2 / 1e6)
    assert equal.size == 640 and equal.tiles[640] == 16
    faster = fit_tile(SAME, {512: 1e6, 768: 1.3e6}, 2048, 2048)
    assert faster.seconds[768] < faster.seconds[512]


def test_sizes_that_fit_the_image_are_weighed_at_interpolated_speed():
    """2048² with a 32 px halo: 576 (4 x 4 steps of 512) and 1088 (2 x 2 of 1024) end at the
    edge. Their speed is the input-pixel rate interpolated between the measured neighbours."""
    halo32 = TileGeometry(padding="same", depth=5, halo=32, kind="stride")
    assert fitted_sizes(halo32, 2048, 2048, 512, 1536) == [576, 768, 1088]
    rates = {512: 1.0e6, 768: 1.0e6, 1536: 0.8e6}
    fit = fit_tile(halo32, rates, 2048, 2048)
    assert (fit.tiles[576], fit.tiles[1088]) == (16, 4)
    input_rate = {t: r * t**2 / halo32.tile_step(t) ** 2 for t, r in rates.items()}
    at_576 = input_rate[512] + (input_rate[768] - input_rate[512]) * (576 - 512) / 256
    assert interpolated_throughput(halo32, rates, 576) == pytest.approx(at_576 * 512**2 / 576**2)
    assert fit.seconds[576] == pytest.approx(16 * 576**2 / at_576)
    assert fit.size == min(fit.seconds, key=fit.seconds.get)
    assert fitted_sizes(VALID, 2048, 2048, 700, 780) == [700]  # 4 x 512: the measured 700 itself


def test_small_images_count_the_shrunk_tile_they_really_run():
    grid = TileGrid.plan(SAME, 300, 300, 768)
    assert (grid.tile_h, grid.tile_w, len(grid)) == (448, 448, 1)
    seconds, tiles = grid_seconds(SAME, 768, 1e6, 300, 300)
    assert tiles == 1 and seconds == pytest.approx(640**2 / 1e6 * 448**2 / 768**2)
    assert fit_tile(SAME, {512: 1e6, 768: 1e6}, 300, 300).size == 512  # 384² / 512² < 640² / 768²


def test_the_choice_is_a_pure_function_and_refuses_empty_input():
    rates = {512: 2.0e6, 768: 2.2e6, 1024: 2.1e6}
    assert fit_tile(SAME, rates, 3000, 1700) == fit_tile(SAME, dict(reversed(rates.items())), 3000, 1700)
    with pytest.raises(ValueError, match="no measured tile sizes"):
        fit_tile(SAME, {}, 100, 100)
    with pytest.raises(ValueError, match="throughput must be positive"):
        grid_seconds(SAME, 512, 0.0, 100, 100)
