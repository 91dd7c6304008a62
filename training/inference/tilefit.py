"""The tile size for one image: measured speed per output pixel AND how the grid fits the image.

A tile size's measured throughput (output pixels per second, halo excluded: what
:func:`training.inference.autotile.choose_tile` measures) says how fast it is on an image of
infinite size. On a real image the grid rounds up: a 2048² image needs ``ceil(2048 / step)`` tiles
per axis, and the last row and column compute pixels past the image edge. A size that wins per
pixel can lose on a given image (a 596 px step needs 4 x 4 tiles on 2048², like a 516 px step,
but each tile is larger). :func:`fit_tile` predicts the seconds of the whole grid for each measured
size and keeps the fastest:

    seconds(t) = tiles(t) * (tile_h * tile_w / t²) * step(t)² / throughput(t)

where ``tile_h x tile_w`` is the input the grid really runs (smaller than ``t`` along an axis the
image does not fill, :func:`training.inference.tiling.axis_tile`).

Besides the measured sizes it weighs the sizes that **fit the image**: for ``n`` tiles along an
axis, the smallest tile whose step times ``n`` covers the axis (2048² with a 32 px halo: 1088 for
2 x 2, 576 for 4 x 4), between the smallest and the largest measured size. Their speed is
interpolated linearly in input pixels per second (the network's rate, smooth in the tile size;
output pixels per second jump with the step's rounding), so nothing is timed twice.

A pure function of the measurements and the image size: the same inputs give the same tile in
every process, so a batch job resolves it once and its workers use the number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.geometry import TileGeometry
from training.inference.tiling import TileGrid


@dataclass(frozen=True)
class TileFit:
    """The tile :func:`fit_tile` chose for one image size, and the predicted seconds of each size."""

    size: int
    seconds: dict[int, float] = field(default_factory=dict)
    tiles: dict[int, int] = field(default_factory=dict)


def grid_seconds(geometry: TileGeometry, tile: int, throughput: float, height: int, width: int) -> tuple[float, int]:
    """Predicted seconds of the ``height x width`` image's grid at tile input ``tile``, from its
    measured ``throughput`` (output pixels per second of full tiles), and the number of tiles."""
    if throughput <= 0:
        raise ValueError(f"throughput must be positive, not {throughput}")
    grid = TileGrid.plan(geometry, height, width, tile)
    per_tile = geometry.tile_step(tile) ** 2 / throughput * (grid.tile_h * grid.tile_w) / tile**2
    return len(grid) * per_tile, len(grid)


def input_rate(geometry: TileGeometry, tile: int, throughput: float) -> float:
    """Input pixels per second of a tile size from its output pixels per second."""
    return throughput * tile**2 / geometry.tile_step(tile) ** 2


def interpolated_throughput(geometry: TileGeometry, throughput: dict[int, float], tile: int) -> float:
    """Output pixels per second of ``tile`` (between two measured sizes): the input rate
    interpolated linearly between its measured neighbours, turned back into output pixels."""
    sizes = sorted(throughput)
    below = max(s for s in sizes if s <= tile)
    above = min(s for s in sizes if s >= tile)
    low, high = input_rate(geometry, below, throughput[below]), input_rate(geometry, above, throughput[above])
    rate = low if above == below else low + (high - low) * (tile - below) / (above - below)
    return rate * geometry.tile_step(tile) ** 2 / tile**2


def fitted_sizes(geometry: TileGeometry, height: int, width: int, smallest: int, largest: int) -> list[int]:
    """Tile input sizes in ``[smallest, largest]`` whose grid ends at the image's edge along an
    axis: for ``n`` tiles, the smallest size whose step times ``n`` covers the axis."""
    sizes: set[int] = set()
    extra = 2 * (geometry.context - geometry.margin)
    for length in {height, width}:
        for n in range(1, -(-length // geometry.stride) + 1):
            share = -(-length // n)  # pixels each of n tiles outputs, rounded up to the stride
            step = -(-share // geometry.stride) * geometry.stride
            size = geometry.input_size_for(step + extra)
            while geometry.tile_step(size) < step:
                size = geometry.input_size_for(geometry.output_size(size) + geometry.stride)
            if size < smallest:
                break
            if size <= largest:
                sizes.add(size)
    return sorted(sizes)


def fit_tile(geometry: TileGeometry, throughput: dict[int, float], height: int, width: int) -> TileFit:
    """The tile size whose grid on a ``height x width`` image is predicted fastest (ties: the
    smaller tile, less memory), among the measured sizes and those fitting the image
    (:func:`fitted_sizes`). ``throughput``: measured tile input size -> output pixels per second."""
    if not throughput:
        raise ValueError("no measured tile sizes to choose from")
    if height < 1 or width < 1:
        raise ValueError(f"image has no pixels ({width}x{height})")
    rates = dict(throughput)
    for size in fitted_sizes(geometry, height, width, min(throughput), max(throughput)):
        rates.setdefault(size, interpolated_throughput(geometry, throughput, size))
    seconds: dict[int, float] = {}
    tiles: dict[int, int] = {}
    for size in sorted(rates):
        seconds[size], tiles[size] = grid_seconds(geometry, size, rates[size], height, width)
    best = min(seconds, key=lambda s: (seconds[s], s))
    return TileFit(size=best, seconds=seconds, tiles=tiles)
