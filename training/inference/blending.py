"""Optional Gaussian blending of overlapping tiles, streamed through a band of rows.

    Predictor(bundle, blend="gaussian", overlap=0.25, sigma_scale=0.125)
    tessera predict model.safetensors slide.tif -o labels.zarr --blend gaussian

Tiles overlap by ``overlap`` of their span (:class:`~training.inference.tiling.TileGrid` with
``overlap > 0``); each tile's probabilities are weighted by a Gaussian importance map (sigma =
``sigma_scale`` x span per axis, as in MONAI's and nnU-Net's sliding windows) and every pixel is the
weighted mean of the tiles that cover it.

Why it is not the default: for a model that is translation-equivariant on the stride grid (a valid
U-Net, a same-padded model with its measured halo) crop-only stitching is already exact, every
pixel computed once; blending then returns the same numbers up to float round-off while running
about ``1 / (1 - overlap)**2`` times more tiles and holding a float band. Blending is for models
where exactness cannot hold -- instance/group/layer norm, whose tiles see their own statistics --
where it hides the seams instead of reproducing a whole-image pass.

Memory: tiles arrive row by row, and once a tile row starts the rows above it are final. The
accumulator is a band of ``span_h`` rows by the region's width, float32 (``K`` weighted sums and
one weight sum), shifted up by one tile step per tile row; finished rows go to the sinks at once.
Nothing image-sized exists, and no image-sized count map. Borders are the tiler's: windows reaching
outside the image are mirrored by :func:`training.mirror.mirror_window` like every other path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from training.errors import OptionError
from training.inference.tiling import Box, Tile, TileGrid

#: Blending modes: ``"none"`` = exact crop-only stitching, ``"gaussian"`` = weighted overlap.
BLEND_MODES = ("none", "gaussian")
#: Share of a tile's span its neighbour repeats (MONAI's sliding-window default).
DEFAULT_OVERLAP = 0.25
#: Gaussian sigma as a share of the tile span (MONAI and nnU-Net: 1/8).
DEFAULT_SIGMA_SCALE = 0.125
#: Smallest weight: keeps every pixel's weight sum positive whatever ``sigma_scale`` is.
WEIGHT_FLOOR = 1e-8

#: Receives finished rows: the box in image pixels and its probabilities ``(K, h, w)`` float32.
Emit = Callable[[Box, np.ndarray], None]


def check_blend(blend: str, overlap: float, sigma_scale: float) -> str:
    """``blend`` if the three blending settings are valid, else ValueError saying which is not."""
    if blend not in BLEND_MODES:
        raise OptionError(f"blend must be one of {', '.join(BLEND_MODES)}, not {blend!r}")
    if not 0.0 <= overlap < 1.0:
        raise OptionError(f"overlap must be a fraction in [0, 1), not {overlap}")
    if not sigma_scale > 0.0:
        raise OptionError(f"sigma_scale must be > 0, not {sigma_scale}")
    return blend


@lru_cache(maxsize=16)
def gaussian_importance(span_h: int, span_w: int, sigma_scale: float = DEFAULT_SIGMA_SCALE) -> np.ndarray:
    """The ``(span_h, span_w)`` float32 importance map: a separable Gaussian centred on the span,
    sigma ``sigma_scale * span`` per axis, 1 at its maximum, never below :data:`WEIGHT_FLOOR`
    (read-only; cached)."""

    def axis(size: int) -> np.ndarray:
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2
        return np.exp(-0.5 * (x / (sigma_scale * size)) ** 2)

    weights = np.outer(axis(span_h), axis(span_w))
    weights = np.maximum(weights / weights.max(), WEIGHT_FLOOR).astype(np.float32)
    weights.setflags(write=False)
    return weights


class BandBlender:
    """Weighted sums of the tiles of one region in a rolling band of rows (see module docstring).

    Feed tiles in grid order (row by row) with :meth:`add`, then call :meth:`finish`; ``emit``
    receives every row of the region exactly once, top to bottom, as normalised probabilities.
    """

    def __init__(self, grid: TileGrid, region: Box, classes: int, sigma_scale: float, emit: Emit) -> None:
        y0, y1, x0, x1 = region
        self.grid = grid
        self.region = region
        self.emit = emit
        self.weights = gaussian_importance(grid.span_h, grid.span_w, sigma_scale)
        #: First row of the region not emitted yet: image row of band row 0.
        self.top = y0
        self.sums = np.zeros((classes, grid.span_h, x1 - x0), np.float32)
        self.total = np.zeros((grid.span_h, x1 - x0), np.float32)

    def add(self, tile: Tile, probabilities: np.ndarray) -> None:
        """Add one tile's model output ``(K, h, w)`` (the full output; the tile's span is cut out)."""
        oy0, oy1, ox0, ox1 = tile.output
        self.release(oy0)
        cy, cx = tile.crop
        wy, wx = cy - self.grid.offset, cx - self.grid.offset
        h, w = oy1 - oy0, ox1 - ox0
        weights = self.weights[wy : wy + h, wx : wx + w]
        rows, cols = slice(oy0 - self.top, oy1 - self.top), slice(ox0 - self.region[2], ox1 - self.region[2])
        self.sums[:, rows, cols] += probabilities[:, cy : cy + h, cx : cx + w] * weights
        self.total[rows, cols] += weights

    def release(self, until: int) -> None:
        """Emit rows ``[top, until)`` (no later tile reaches them) and shift the band up."""
        count = until - self.top
        if count <= 0:
            return
        x0, x1 = self.region[2:]
        self.emit((self.top, until, x0, x1), self.sums[:, :count] / self.total[:count])
        keep = self.total.shape[0] - count
        self.sums[:, :keep] = self.sums[:, count:]
        self.total[:keep] = self.total[count:]
        self.sums[:, keep:] = 0.0
        self.total[keep:] = 0.0
        self.top = until

    def finish(self) -> None:
        """Emit the rows left in the band (after the last tile)."""
        self.release(self.region[1])
