"""The task graph of a gigapixel job: ``dask.array.map_overlap`` over the lazily padded input.

* :class:`PaddedInput` -- the input mirror-padded by the plan with Tessera's one mirror
  (:func:`~training.mirror.mirror_window`), read lazily chunk by chunk;
* :func:`segment_block` -- map_overlap's function: one output chunk from its block plus halo,
  through :meth:`~training.inference.predictor.Predictor.predict_region`;
* :func:`write_block` -- writes a chunk into the partial output, then its done-marker;
* :func:`window_work` -- the graphs of the pending chunks, one :data:`WINDOW` x :data:`WINDOW`
  window of chunks at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.batch.gigapixel.plan import GigapixelJob
from service.batch.gigapixel.state import marker
from service.batch.scheduler import PredictorSpec, predictor_for
from training.io.omezarr import PROBABILITIES
from training.io.readers import fit_channels, open_image
from training.io.writers import encode_probabilities, label_dtype
from training.mirror import PaddedImage, mirror_window

#: Output chunks per side of the window one map_overlap graph is built and computed for.
WINDOW = 4

#: One window's work: a dask task graph and the keys of its write tasks.
Work = tuple[dict, list]

#: Sources opened in this process, by path (workers keep the file open across tasks).
_SOURCES: dict[tuple[str, int], object] = {}


def open_source(job: GigapixelJob):
    """The job's input in this process, fitted to the model's channels (opened once per process)."""
    key = (job.source, job.channels)
    if key not in _SOURCES:
        _SOURCES.clear()
        source = job.slide.open() if job.slide is not None else open_image(job.source, max_pixels=job.max_pixels)
        _SOURCES[key] = fit_channels(source, job.channels)
    return _SOURCES[key]


@dataclass(frozen=True)
class PaddedInput:
    """The job's input mirror-padded by its plan, read lazily chunk by chunk (what
    ``da.from_array`` wraps). Picklable: it holds the job (a path), never an open file."""

    job: GigapixelJob

    @property
    def shape(self) -> tuple[int, ...]:
        (by, bx), (ay, ax) = self.job.plan.before, self.job.plan.beyond
        return (by + self.job.height + ay, bx + self.job.width + ax, *self.job.shape[2:])

    @property
    def ndim(self) -> int:
        return len(self.job.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.job.dtype)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """Padded rows/columns ``key`` (slices with bounds, as dask passes them), mirrored."""
        rows, cols, *rest = key
        by, bx = self.job.plan.before
        pixels = mirror_window(open_source(self.job), rows.start - by, rows.stop - by, cols.start - bx, cols.stop - bx)
        return pixels[(slice(None), slice(None), *rest)]


def _location(block_info: dict, which, origin: tuple[int, int]) -> tuple[int, int, int, int]:
    """Image box ``(y0, y1, x0, x1)`` of a block, from dask's ``block_info`` and the window origin."""
    (y0, y1), (x0, x1) = block_info[which]["array-location"][-2:]
    return y0 + origin[0], y1 + origin[0], x0 + origin[1], x1 + origin[1]


def segment_block(block: np.ndarray, job: GigapixelJob, spec: PredictorSpec, origin: tuple[int, int],
                  block_info: dict | None = None) -> np.ndarray:
    """map_overlap's function: one output chunk from its padded input block (chunk + halo).

    Returns ``(job.layers, h, w)``: the labels, then ``round(255 p)`` per class if asked.
    """
    y0, y1, x0, x1 = _location(block_info, None, origin)
    by, bx = job.plan.before
    image = PaddedImage(block, (y0 - by, x0 - bx), job.shape)
    stats = (np.asarray(job.mean, np.float64), np.asarray(job.std, np.float64))
    prediction = predictor_for(spec).predict_region(image, y0, y1, x0, x1, stats, probabilities=job.probabilities,
                                                    skip=job.skip)
    planes = [prediction.labels]
    if job.probabilities:
        planes.extend(encode_probabilities(prediction.probabilities, np.uint8))
    return np.stack(planes).astype(label_dtype(job.classes), copy=False)


def write_block(segmented: np.ndarray, job: GigapixelJob, origin: tuple[int, int],
                block_info: dict | None = None) -> np.ndarray:
    """Write one segmented chunk into the partial output, then its done-marker. Returns the
    chunk's flat index ``row * columns + column`` as a ``(1, 1, 1)`` int64 block (see
    :meth:`~service.batch.gigapixel.plan.GigapixelJob.chunk_at`)."""
    import zarr  # noqa: PLC0415  gigapixel jobs only; service.batch loads this package for folder jobs too

    y0, y1, x0, x1 = _location(block_info, 0, origin)
    group = zarr.open_group(job.partial, mode="r+")
    group["0"][y0:y1, x0:x1] = segmented[0]
    if job.probabilities:
        group[f"{PROBABILITIES}/0"][:, y0:y1, x0:x1] = segmented[1:].astype(np.uint8)
    index = (y0 // job.chunk[0], x0 // job.chunk[1])
    marker(Path(job.partial), index).touch()
    return np.full((1, 1, 1), index[0] * job.grid[1] + index[1], np.int64)


def padded_input(job: GigapixelJob):
    """The mirror-padded input as a lazy dask array chunked like the output (plus the padding)."""
    import dask.array as da  # noqa: PLC0415  gigapixel jobs only; service.batch loads this package for folder jobs too

    chunks = (job.padded_chunks(0), job.padded_chunks(1), *((n,) for n in job.shape[2:]))
    data = PaddedInput(job)
    return da.from_array(data, chunks=chunks, lock=False, meta=np.empty((0,) * data.ndim, data.dtype))


def segmentation(padded, job: GigapixelJob, spec: PredictorSpec,
                 rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None):
    """The output chunks ``rows x cols`` (chunk indices, default all) as a lazy
    ``(job.layers, h, w)`` dask array: ``map_overlap`` of :func:`segment_block` over those chunks
    of the padded input plus their ring of neighbours, ``boundary="none"``."""
    import dask.array as da  # noqa: PLC0415  gigapixel jobs only; service.batch loads this package for folder jobs too

    (r0, r1), (c0, c1) = rows or (0, job.grid[0]), cols or (0, job.grid[1])
    a, b = max(0, r0 - 1), min(job.grid[0], r1 + 1)
    c, d = max(0, c0 - 1), min(job.grid[1], c1 + 1)
    dtype = label_dtype(job.classes)
    result = da.map_overlap(
        segment_block, padded.blocks[a:b, c:d],
        depth=job.plan.depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=((job.layers,), job.output_chunks(0)[a:b], job.output_chunks(1)[c:d]),
        new_axis=[0], drop_axis=[2] if len(job.shape) == 3 else [],
        dtype=dtype, meta=np.empty((0, 0, 0), dtype),
        job=job, spec=spec, origin=(a * job.chunk[0], c * job.chunk[1]),
    )
    return result.blocks[:, r0 - a : r1 - a, c0 - c : c1 - c]


def window_work(padded, job: GigapixelJob, spec: PredictorSpec, pending: list[tuple[int, int]]) -> Iterator[Work]:
    """For each :data:`WINDOW` x :data:`WINDOW` window holding pending chunks: the optimised
    graph of its written chunks and the keys of the pending ones (built one window at a time)."""
    from dask.array.optimization import optimize  # noqa: PLC0415  gigapixel jobs only; service.batch loads this package for folder jobs too

    windows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in pending:
        windows.setdefault((r // WINDOW, c // WINDOW), []).append((r, c))
    for (wr, wc), indices in windows.items():
        rows = (wr * WINDOW, min(job.grid[0], (wr + 1) * WINDOW))
        cols = (wc * WINDOW, min(job.grid[1], (wc + 1) * WINDOW))
        segmented = segmentation(padded, job, spec, rows, cols)
        written = segmented.map_blocks(
            write_block, job=job, origin=(rows[0] * job.chunk[0], cols[0] * job.chunk[1]),
            chunks=((1,), (1,) * (rows[1] - rows[0]), (1,) * (cols[1] - cols[0])),
            dtype=np.int64, meta=np.empty((0, 0, 0), np.int64),
        )
        keys = [(written.name, 0, r - rows[0], c - cols[0]) for r, c in indices]
        yield optimize(written.__dask_graph__(), keys), keys
