"""The geometry of a gigapixel job: the map_overlap depth and padding, the chunking, and the
:class:`GigapixelJob` every block receives (see :mod:`service.batch.gigapixel`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from training.errors import OptionError
from training.inference.tiling import TileGrid

#: Aimed-for chunk edge in output pixels (rounded to a whole number of tile steps).
CHUNK_TARGET = 1024


@dataclass(frozen=True)
class OverlapPlan:
    """The map_overlap geometry, per axis ``(y, x)``, in pixels.

    ``before`` / ``after``: the depth -- input a chunk's tiles read before its first and after its
    last output pixel; ``beyond``: the mirror padding after the image's end, at least to the end
    of the last tile row's window (the padding before it is ``before``).
    """

    before: tuple[int, int]
    after: tuple[int, int]
    beyond: tuple[int, int]

    @property
    def depth(self) -> dict[int, tuple[int, int]]:
        """map_overlap's asymmetric depth (allowed with ``boundary="none"`` only)."""
        return {0: (self.before[0], self.after[0]), 1: (self.before[1], self.after[1])}

    @property
    def least_chunk(self) -> tuple[int, int]:
        """Smallest chunk edges: dask takes a block's halo from its direct neighbours only."""
        return max(self.before[0], self.after[0]), max(self.before[1], self.after[1])


def reach_back(span: int, step: int) -> int:
    """Pixels before a chunk start (a multiple of ``step``) at which the first tile whose output
    meets the chunk starts: 0 for abutting tiles, whole steps back for overlapping ones (a tile
    ``i`` writes ``[i step, i step + span)``)."""
    return (-(-span // step) - 1) * step


def overlap_plan(grid: TileGrid) -> OverlapPlan:
    """Depth and padding from the whole image's tile grid. A chunk of whole tile steps starting
    at ``y0`` reads from the window start of the first tile meeting it (``y0 - context`` for
    abutting tiles, whole steps earlier for overlapping blended ones) to its end plus
    ``window end - step`` of the first tile (the output rows the step drops to keep tiles on the
    pooling stride, or the rows a blended tile overlaps its neighbour)."""
    wy0, wy1, wx0, wx1 = grid.tile(0, 0).window
    last = grid.tile(grid.rows - 1, grid.cols - 1).window
    return OverlapPlan(
        before=(reach_back(grid.span_h, grid.step_h) - wy0, reach_back(grid.span_w, grid.step_w) - wx0),
        after=(wy1 - grid.step_h, wx1 - grid.step_w),
        beyond=(last[1] - grid.height, last[3] - grid.width),
    )


def chunk_shape(height: int, width: int, step_h: int, step_w: int, chunk: int | None,
                least: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Chunk edges: whole numbers of tile steps, about ``chunk`` (default CHUNK_TARGET) pixels,
    at least ``least`` (the map_overlap depth), no more steps than the image needs."""
    target = chunk or CHUNK_TARGET
    if target < 1:
        raise OptionError(f"chunk must be >= 1 pixel, not {target}")

    def edge(length: int, step: int, minimum: int) -> int:
        return step * min(max(1, round(target / step), -(-minimum // step)), -(-length // step))

    return edge(height, step_h, least[0]), edge(width, step_w, least[1])


def plan_chunks(predictor, height: int, width: int, chunk: int | None) -> tuple[OverlapPlan, tuple[int, int]]:
    """The map_overlap plan and the chunk edges of a ``height x width`` job with ``predictor``.

    dask wants every input chunk at least as deep as the overlap, the last one included: when the
    last chunk (the image's remainder plus the padding beyond it) is smaller, the padding beyond
    the image grows to fill it (mirrored pixels no tile reads)."""
    grid = predictor.grid(height, width)
    plan = overlap_plan(grid)
    chunks = chunk_shape(height, width, grid.step_h, grid.step_w, chunk, plan.least_chunk)
    beyond = tuple(
        max(pad, least - (length - (-(-length // edge) - 1) * edge))
        for pad, least, length, edge in zip(plan.beyond, plan.least_chunk, (height, width), chunks)
    )
    return dataclasses.replace(plan, beyond=beyond), chunks


@dataclass(frozen=True)
class GigapixelJob:
    """What every block needs (picklable): the input, the partial output, the chunking, the
    map_overlap plan and the whole image's normalisation statistics; for a slide, how to open it
    and which tiles to skip."""

    source: str
    partial: str
    shape: tuple[int, ...]
    dtype: str
    chunk: tuple[int, int]
    plan: OverlapPlan
    classes: int
    probabilities: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int | None
    #: A whole-slide input: how to open its source (:class:`~training.inference.slide.SlideSpec`).
    slide: object | None = None
    #: Tiles not computed (:class:`~training.inference.skipping.TileSkip`), e.g. without tissue.
    skip: object | None = None

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        """Channels of the (model-fitted) input: 1 for a 2-D image."""
        return self.shape[2] if len(self.shape) == 3 else 1

    @property
    def layers(self) -> int:
        """Planes of a segmented block: the labels, then one per class with probabilities."""
        return 1 + (self.classes if self.probabilities else 0)

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.chunk[0]), -(-self.width // self.chunk[1])

    def chunks(self) -> list[tuple[int, int]]:
        rows, cols = self.grid
        return [(r, c) for r in range(rows) for c in range(cols)]

    def chunk_at(self, flat: int) -> tuple[int, int]:
        """The chunk ``(row, column)`` of a flat index ``row * columns + column``."""
        return divmod(int(flat), self.grid[1])

    def box(self, index: tuple[int, int]) -> tuple[int, int, int, int]:
        (r, c), (ch, cw) = index, self.chunk
        return r * ch, min((r + 1) * ch, self.height), c * cw, min((c + 1) * cw, self.width)

    def output_chunks(self, axis: int) -> tuple[int, ...]:
        """Chunk sizes of the output along ``axis`` (0: y, 1: x)."""
        length, edge = self.shape[axis], self.chunk[axis]
        return (edge,) * (length // edge) + ((length % edge,) if length % edge else ())

    def padded_chunks(self, axis: int) -> tuple[int, ...]:
        """Chunk sizes of the padded input: the output's, the first grown by the padding before
        the image, the last by the padding beyond it."""
        sizes = list(self.output_chunks(axis))
        sizes[0] += self.plan.before[axis]
        sizes[-1] += self.plan.beyond[axis]
        return tuple(sizes)
