"""The tile grid: which input windows the tiler reads and which output pixels each one writes.

Overlap-tile (Ronneberger et al. 2015) for any :class:`~training.geometry.TileGeometry`:

* every tile has the same input size ``(tile_h, tile_w)`` (valid sizes for the network);
* output blocks abut: tile ``(i, j)`` writes image pixels ``[i*step_h, (i+1)*step_h)`` x
  ``[j*step_w, (j+1)*step_w)``, clipped to the image, where ``step = geometry.tile_step(tile)`` is
  a multiple of the network stride;
* its input window starts ``context`` pixels before its output block (``margin`` for a valid
  U-Net, the measured ``halo`` for same padding), so all input origins lie on one stride grid
  together with the whole-image reference window (origin ``-context``): max-pooling sees the
  same phase everywhere, and a valid U-Net reproduces the whole-image pass exactly;
* windows reaching outside the image are mirrored by :func:`training.mirror.mirror_window`.

A tile's model output covers image rows ``[y0 - context + margin, y0 - context + tile - margin)``;
the rows it keeps start at offset ``context - margin`` inside that output (0 for valid padding).

With ``overlap > 0`` (Gaussian blending, :mod:`training.inference.blending`) tiles overlap instead of
abutting: a tile contributes its whole usable output, ``span = output - 2 * (context - margin)``
pixels from its block start, and consecutive tiles start ``step = (1 - overlap) * span`` apart,
rounded down to the stride (so inputs stay on the same stride grid). ``overlap = 0`` is the
crop-only grid above (``span == step``).

Small images get smaller tiles: along each axis the tile is the smallest valid size whose step
covers the image, if that is smaller than the requested size (a 3x5 image does not run 572² tiles).
The grid depends only on the image size and the requested tile, never on the region asked for,
so a region computed alone (a Dask block) equals the same region of a whole run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from training.errors import OptionError
from training.geometry import InvalidSizeError, TileGeometry

#: A rectangle in image coordinates: (y0, y1, x0, x1), half-open.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tile:
    """One tile: its input window (may extend past the image) and the output pixels it writes.

    ``crop`` is where ``output`` sits inside the model's output for this tile:
    ``(row offset, column offset)``.
    """

    row: int
    col: int
    window: Box
    output: Box
    crop: tuple[int, int]


def axis_tile(geometry: TileGeometry, requested: int, length: int) -> int:
    """The tile input size along an axis of ``length`` pixels: ``requested`` (checked valid), or
    the smallest valid size whose step covers ``length`` when that is smaller."""
    geometry.check_input(requested)
    geometry.tile_step(requested)  # raises when the tile leaves no usable output
    extra = 2 * (geometry.context - geometry.margin)
    needed_step = -(-length // geometry.stride) * geometry.stride
    covering = geometry.input_size_for(needed_step + extra)
    return min(requested, covering)


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of one image. Build it with :meth:`plan`."""

    geometry: TileGeometry
    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: float = 0.0

    @classmethod
    def plan(cls, geometry: TileGeometry, height: int, width: int, tile: int, overlap: float = 0.0) -> TileGrid:
        """Grid for an image of ``height x width`` pixels with tiles of input size ``tile``;
        ``overlap`` is the share of a tile's span its neighbour repeats (0: blocks abut)."""
        if height < 1 or width < 1:
            raise InvalidSizeError(f"image has no pixels ({width}x{height})")
        if not 0.0 <= overlap < 1.0:
            raise OptionError(f"overlap must be in [0, 1), not {overlap}")
        return cls(
            geometry=geometry,
            height=height,
            width=width,
            tile_h=axis_tile(geometry, tile, height),
            tile_w=axis_tile(geometry, tile, width),
            overlap=float(overlap),
        )

    def _span(self, tile: int) -> int:
        if self.overlap == 0.0:
            return self.geometry.tile_step(tile)
        return self.geometry.output_size(tile) - 2 * self.offset

    def _step(self, tile: int) -> int:
        step = self.geometry.tile_step(tile)
        if self.overlap == 0.0:
            return step
        stride = self.geometry.stride
        return max(stride, int(self._span(tile) * (1.0 - self.overlap)) // stride * stride)

    @property
    def step_h(self) -> int:
        """Rows between the starts of consecutive tiles (a multiple of the stride)."""
        return self._step(self.tile_h)

    @property
    def step_w(self) -> int:
        return self._step(self.tile_w)

    @property
    def span_h(self) -> int:
        """Output rows one tile contributes (``step_h`` unless tiles overlap)."""
        return self._span(self.tile_h)

    @property
    def span_w(self) -> int:
        return self._span(self.tile_w)

    @property
    def rows(self) -> int:
        return _count(self.height, self.span_h, self.step_h)

    @property
    def cols(self) -> int:
        return _count(self.width, self.span_w, self.step_w)

    @property
    def offset(self) -> int:
        """Offset of a tile's kept pixels inside its model output (``context - margin``)."""
        return self.geometry.context - self.geometry.margin

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, row: int, col: int, region: Box | None = None) -> Tile:
        """Tile ``(row, col)``; its output clipped to the image and to ``region`` if given."""
        y0, y1, x0, x1 = region or (0, self.height, 0, self.width)
        top, left = row * self.step_h, col * self.step_w
        out = (
            max(top, y0),
            min(top + self.span_h, self.height, y1),
            max(left, x0),
            min(left + self.span_w, self.width, x1),
        )
        context = self.geometry.context
        window = (top - context, top - context + self.tile_h, left - context, left - context + self.tile_w)
        crop = (out[0] - top + self.offset, out[2] - left + self.offset)
        return Tile(row=row, col=col, window=window, output=out, crop=crop)

    def tiles(self, region: Box | None = None) -> Iterator[Tile]:
        """Tiles whose output meets ``region`` (default: the whole image), row by row."""
        y0, y1, x0, x1 = check_region(region or (0, self.height, 0, self.width), self.height, self.width)
        for row in _meeting(y0, y1, self.span_h, self.step_h, self.rows):
            for col in _meeting(x0, x1, self.span_w, self.step_w, self.cols):
                yield self.tile(row, col, (y0, y1, x0, x1))

    def whole_window(self) -> tuple[Box, tuple[int, int]]:
        """The reference: ONE input window covering the whole image (origin ``-context``, smallest
        valid size) and the offset of the image inside its output."""
        extra = 2 * self.offset
        size_h = self.geometry.input_size_for(self.height + extra)
        size_w = self.geometry.input_size_for(self.width + extra)
        context = self.geometry.context
        window = (-context, size_h - context, -context, size_w - context)
        return window, (self.offset, self.offset)


def _count(length: int, span: int, step: int) -> int:
    """Tiles along an axis: starts ``0, step, 2 step, ...`` until a span reaches ``length``."""
    return max(0, -(-(length - span) // step)) + 1


def _meeting(start: int, stop: int, span: int, step: int, count: int) -> range:
    """Indices of the tiles along an axis whose ``[i step, i step + span)`` meets ``[start, stop)``."""
    return range(max(0, (start - span) // step + 1), min(count, -(-stop // step)))


def check_region(region: Box, height: int, width: int) -> Box:
    """``region`` if it is a non-empty box inside a ``height x width`` image, else ValueError."""
    y0, y1, x0, x1 = (int(v) for v in region)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise OptionError(f"region {region} is not a non-empty box inside the {height}x{width} image")
    return y0, y1, x0, x1
