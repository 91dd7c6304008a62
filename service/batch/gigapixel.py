"""Gigapixel jobs: one TIFF/BigTIFF or zarr image larger than memory -> OME-Zarr (zarr v3, NGFF 0.5).

Output ``DST/NAME.zarr`` (``NAME`` = the input's name without its suffix), an OME-Zarr label image:

* ``0``, ``1``, ... -- the label map (class indices, uint8; uint16 above 256 classes) and its
  pyramid, each level half the previous one (nearest sample: class indices are never averaged),
  down to one chunk; axes ``y, x``; ``image-label`` metadata names the classes and their colours;
* ``probabilities/0``, ``probabilities/1``, ... with ``probabilities=True`` -- ``(K, H, W)``
  uint8 ``round(255 p)``, axes ``c, y, x``, same pyramid rule;
* attributes ``tessera``: the bundle hash, tile, classes, chunk and the job key.

With ``tiff=True`` the full-resolution label map is also written as a tiled BigTIFF
``DST/NAME.tif`` (streamed in row bands; temporary name, then rename).

The computation is ``dask.array.map_overlap`` over the lazily read input:

* the output is chunked on the predictor's tile grid (a chunk is a whole number of tile steps,
  about :data:`CHUNK_TARGET` pixels), and the input array has the same chunks;
* the input is mirror-padded beforehand with Tessera's one mirror (:mod:`training.mirror`,
  numpy ``reflect``), lazily: :class:`PaddedInput` reads every chunk through
  :func:`~training.mirror.mirror_window`. map_overlap then runs with ``boundary="none"``. Dask's
  own ``boundary="reflect"`` is numpy's ``symmetric`` (the edge pixel repeated): it would change
  every tile that reaches past the image border;
* ``depth`` per axis is ``(before, after)`` from :func:`overlap_plan`: ``before`` is the model's
  context (the margin of a valid U-Net, the measured halo of a same-padded smp model) and
  ``after`` the context plus the part of a tile's output beyond its step, which the step drops to
  stay on the pooling stride. The first and last chunks carry the padding; the last one up to the
  last tile row's window, which may reach past the image by more than the depth;
* :func:`segment_block` gets a chunk plus its halo and runs
  :meth:`~training.inference.predictor.Predictor.predict_region` on it through a
  :class:`~training.mirror.PaddedImage`: the tiles are those of the whole image's grid (same
  stride phase, same tile sizes), their windows plain slices of the block, normalised with the
  whole image's statistics (computed once, streamed, before the run). Every chunk is therefore
  byte-identical to the same block of ``tessera predict`` on the whole image, for valid and same
  padding alike, whichever process computes it;
* :func:`write_block` (a ``map_blocks`` over the map_overlap result) writes a chunk into the
  partial output, then its done-marker.

Only the chunks without a marker are computed, :data:`WINDOW` x :data:`WINDOW` chunks at a time:
map_overlap is applied to that window of the padded input plus its ring of neighbour chunks
(dask's overlap reads only direct neighbours), so the task graph and the pixels in flight stay
bounded whatever the image size (dask materialises an overlap graph whole: about 12 tasks per
chunk), and each input chunk is read about ``(WINDOW + 2)**2 / WINDOW**2`` times. The runner
(:mod:`service.batch.scheduler`) computes the windows here with dask's synchronous scheduler or on
a Dask cluster, where the model is loaded once per worker.

Resuming: while running, the output lives in ``DST/.NAME.zarr.partial``. A block writes its
chunk(s) and then a done-marker file (``.tessera-done/ROW.COL``). zarr 3 does not store chunks
equal to the fill value, so a missing chunk cannot mean "not done": only the marker does. A
rerun with the same job key (bundle, tile, TTA, chunking, probabilities, input size and
modification time) recomputes exactly the chunks without a marker; a different key starts over.
When all chunks are done the pyramid and metadata are written, markers removed, and the folder
renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.batch.files import atomic_write, job_lock, sweep_temporaries
from service.batch.scheduler import PredictorSpec, predictor_for
from training.errors import OptionError
from training.mirror import PaddedImage, mirror_window
from training.io.overlay import PALETTE
from training.io.readers import TIFF_SUFFIXES, ZARR_SUFFIXES, fit_channels, open_image
from training.inference.tiling import TileGrid
from training.io.writers import encode_probabilities, label_dtype, move_into_place, open_sink

#: Aimed-for chunk edge in output pixels (rounded to a whole number of tile steps).
CHUNK_TARGET = 1024
#: Output chunks per side of the window one map_overlap graph is built and computed for.
WINDOW = 4
#: Name suffix of the folder an unfinished output lives in.
PARTIAL_SUFFIX = ".partial"
#: Folder of done-markers inside the partial output.
DONE_FOLDER = ".tessera-done"
#: File holding the job's key and normalisation statistics inside the partial output.
JOB_FILE = ".tessera-job.json"
#: The probabilities image inside the output.
PROBABILITIES = "probabilities"
#: Suffixes of inputs a gigapixel job takes.
GIGAPIXEL_SUFFIXES = TIFF_SUFFIXES + ZARR_SUFFIXES
#: OME-NGFF axes of the label and probability images.
SPACE_AXES = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
CHANNEL_AXIS = {"name": "c", "type": "channel"}

Progress = Callable[[int, int], None]
#: One window's work: a dask task graph and the keys of its write tasks.
Work = tuple[dict, list]

#: Sources opened in this process, by path (workers keep the file open across tasks).
_SOURCES: dict[tuple[str, int], object] = {}


@dataclass(frozen=True)
class OverlapPlan:
    """The map_overlap geometry, per axis ``(y, x)``, in pixels.

    ``before`` / ``after``: the depth -- input a chunk's tiles read before its first and after its
    last output pixel; ``beyond``: the mirror padding after the image's end, up to the end of the
    last tile row's window (the padding before it is ``before``).
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


def overlap_plan(grid: TileGrid) -> OverlapPlan:
    """Depth and padding from the whole image's crop-only tile grid: a chunk of whole tile steps
    starting at ``y0`` reads rows ``y0 - context`` to its end plus ``window end - step`` of the
    first tile (the output rows the step drops to keep tiles on the pooling stride)."""
    wy0, wy1, wx0, wx1 = grid.tile(0, 0).window
    last = grid.tile(grid.rows - 1, grid.cols - 1).window
    return OverlapPlan(
        before=(-wy0, -wx0),
        after=(wy1 - grid.step_h, wx1 - grid.step_w),
        beyond=(last[1] - grid.height, last[3] - grid.width),
    )


def plan_chunks(predictor, height: int, width: int, chunk: int | None) -> tuple[OverlapPlan, tuple[int, int]]:
    """The map_overlap plan and the chunk edges of a ``height x width`` job with ``predictor``."""
    grid = predictor.grid(height, width)
    plan = overlap_plan(grid)
    return plan, chunk_shape(height, width, grid.step_h, grid.step_w, chunk, plan.least_chunk)


@dataclass(frozen=True)
class GigapixelJob:
    """What every block needs (picklable): the input, the partial output, the chunking, the
    map_overlap plan and the whole image's normalisation statistics."""

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
        pixels = mirror_window(_open_source(self.job), rows.start - by, rows.stop - by, cols.start - bx, cols.stop - bx)
        return pixels[(slice(None), slice(None), *rest)]


@dataclass
class GigapixelReport:
    """What a gigapixel job did."""

    src: str
    dst: str
    output: str
    scheduler: str
    tiff: str | None = None
    shape: list[int] = field(default_factory=list)
    chunk: list[int] = field(default_factory=list)
    chunks: int = 0
    computed: int = 0
    resumed: int = 0
    complete_before: bool = False
    levels: int = 0
    seconds: float = 0.0
    kind: str = "gigapixel"

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def is_gigapixel_source(src: str | Path) -> bool:
    """True for an existing TIFF/BigTIFF file or zarr store (what a gigapixel job takes)."""
    path = Path(src)
    return path.suffix.lower() in GIGAPIXEL_SUFFIXES and path.exists()


def output_stem(src: Path) -> str:
    """The input's name without its image suffixes (``slide.ome.tif`` -> ``slide``)."""
    name = src.name
    for suffix in (*GIGAPIXEL_SUFFIXES, ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or "image"


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


def source_fingerprint(path: Path) -> dict:
    """Identity of the input for resuming: size and modification time (of zarr metadata for a store)."""
    files = [path] if path.is_file() else sorted(path.rglob("zarr.json"))
    return {"path": str(path.resolve()), "files": [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def marker(partial: Path, index: tuple[int, int]) -> Path:
    return partial / DONE_FOLDER / f"{index[0]}.{index[1]}"


# ---------------------------------------------------------------------------------- the blocks
def _open_source(job: GigapixelJob):
    """The job's input in this process, fitted to the model's channels (opened once per process)."""
    key = (job.source, job.channels)
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = fit_channels(open_image(job.source, max_pixels=job.max_pixels), job.channels)
    return _SOURCES[key]


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
    prediction = predictor_for(spec).predict_region(image, y0, y1, x0, x1, stats, probabilities=job.probabilities)
    planes = [prediction.labels]
    if job.probabilities:
        planes.extend(encode_probabilities(prediction.probabilities, np.uint8))
    return np.stack(planes).astype(label_dtype(job.classes), copy=False)


def write_block(segmented: np.ndarray, job: GigapixelJob, origin: tuple[int, int],
                block_info: dict | None = None) -> np.ndarray:
    """Write one segmented chunk into the partial output, then its done-marker."""
    import zarr

    y0, y1, x0, x1 = _location(block_info, 0, origin)
    group = zarr.open_group(job.partial, mode="r+")
    group["0"][y0:y1, x0:x1] = segmented[0]
    if job.probabilities:
        group[f"{PROBABILITIES}/0"][:, y0:y1, x0:x1] = segmented[1:].astype(np.uint8)
    marker(Path(job.partial), (y0 // job.chunk[0], x0 // job.chunk[1])).touch()
    return np.ones((1, 1, 1), np.uint8)


def padded_input(job: GigapixelJob):
    """The mirror-padded input as a lazy dask array chunked like the output (plus the padding)."""
    import dask.array as da

    chunks = (job.padded_chunks(0), job.padded_chunks(1), *((n,) for n in job.shape[2:]))
    data = PaddedInput(job)
    return da.from_array(data, chunks=chunks, lock=False, meta=np.empty((0,) * data.ndim, data.dtype))


def segmentation(padded, job: GigapixelJob, spec: PredictorSpec,
                 rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None):
    """The output chunks ``rows x cols`` (chunk indices, default all) as a lazy
    ``(job.layers, h, w)`` dask array: ``map_overlap`` of :func:`segment_block` over those chunks
    of the padded input plus their ring of neighbours, ``boundary="none"``."""
    import dask.array as da

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
    from dask.array.optimization import optimize

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
            dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8),
        )
        keys = [(written.name, 0, r - rows[0], c - cols[0]) for r, c in indices]
        yield optimize(written.__dask_graph__(), keys), keys


# ---------------------------------------------------------------------------------- the job
def run_gigapixel(
    src: str | Path,
    dst: str | Path,
    spec: PredictorSpec,
    predictor,
    runner,
    probabilities: bool = False,
    tiff: bool = False,
    chunk: int | None = None,
    max_pixels: int | None = None,
    progress: Progress | None = None,
) -> GigapixelReport:
    """Run a gigapixel job with ``runner``; ``predictor`` (built from ``spec`` in this process)
    plans the grid and computes the normalisation statistics."""
    started = time.perf_counter()
    src, root = Path(src), Path(dst)
    stem = output_stem(src)
    output, tiff_path = root / f"{stem}.zarr", (root / f"{stem}.tif" if tiff else None)
    if output.resolve() == src.resolve() or (tiff_path is not None and tiff_path.resolve() == src.resolve()):
        raise OptionError(f"{src}: the output would overwrite the input; choose another DST")
    report = GigapixelReport(src=str(src), dst=str(root), output=str(output), scheduler=runner.description,
                             tiff=str(tiff_path) if tiff_path else None)
    with job_lock(root):
        sweep_temporaries(root)
        source = fit_channels(open_image(src, max_pixels=max_pixels), predictor.info.in_channels)
        height, width = (int(n) for n in source.shape[:2])
        plan, chunks = plan_chunks(predictor, height, width, chunk)
        key = _job_key(spec, src, (height, width), chunks, probabilities)
        report.shape, report.chunk = [height, width], list(chunks)
        if _complete(output, key):
            report.complete_before = True
            report.levels = len(_levels(height, width, chunks))
            report.chunks = -(-height // chunks[0]) * -(-width // chunks[1])
            report.resumed = report.chunks
            if tiff_path is not None and not tiff_path.exists():
                write_tiff(output, tiff_path, chunks[0])
            report.seconds = round(time.perf_counter() - started, 3)
            return report
        partial = root / f".{output.name}{PARTIAL_SUFFIX}"
        job = _open_partial(partial, key, src, source, predictor, plan, chunks, probabilities, max_pixels)
        indices = job.chunks()
        pending = [i for i in indices if not marker(partial, i).exists()]
        report.chunks, report.resumed = len(indices), len(indices) - len(pending)
        if progress is not None:
            progress(report.resumed, len(indices))

        def written(_result) -> None:
            report.computed += 1
            if progress is not None:
                progress(report.resumed + report.computed, len(indices))

        runner.compute(window_work(padded_input(job), job, spec, pending), written)
        missing = [i for i in indices if not marker(partial, i).exists()]
        if missing:
            raise RuntimeError(f"{len(missing)} chunk(s) have no done-marker after the run; rerun the job")
        report.levels = finish(partial, output, job, spec, predictor, key, tiff_path, runner.client)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _job_key(spec: PredictorSpec, src: Path, shape, chunks, probabilities: bool) -> str:
    settings = {
        "bundle": spec.sha256, "tile": spec.tile, "tta": spec.tta, "shape": list(shape), "chunk": list(chunks),
        "probabilities": probabilities, "source": source_fingerprint(src),
    }
    if spec.threshold != "bundle":  # only when set, so keys of older jobs are unchanged
        settings["threshold"] = spec.threshold
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _complete(output: Path, key: str) -> bool:
    """True when ``output`` is a finished OME-Zarr of this very job."""
    metadata = output / "zarr.json"
    if not metadata.is_file():
        return False
    try:
        attributes = json.loads(metadata.read_text()).get("attributes", {})
    except (OSError, json.JSONDecodeError):
        return False
    return attributes.get("tessera", {}).get("job") == key


def _open_partial(partial, key, src, source, predictor, plan, chunks, probabilities, max_pixels) -> GigapixelJob:
    """The job of an unfinished output with this key (resumed), or a fresh partial output."""
    import zarr

    shape = tuple(int(n) for n in source.shape)
    job_file = partial / JOB_FILE
    stats = None
    if job_file.is_file():
        try:
            saved = json.loads(job_file.read_text())
            if saved.get("job") == key:
                stats = (tuple(saved["mean"]), tuple(saved["std"]))
        except (OSError, json.JSONDecodeError, KeyError):
            stats = None
    classes = predictor.num_classes
    if stats is None:
        if partial.exists():
            shutil.rmtree(partial)
        mean, std = predictor.statistics(source)
        stats = (tuple(float(v) for v in np.atleast_1d(mean)), tuple(float(v) for v in np.atleast_1d(std)))
        group = zarr.open_group(str(partial), mode="w", zarr_format=3)
        group.create_array("0", shape=shape[:2], chunks=chunks, dtype=label_dtype(classes), fill_value=0,
                           dimension_names=("y", "x"))
        if probabilities:
            group.create_group(PROBABILITIES).create_array(
                "0", shape=(classes, *shape[:2]), chunks=(classes, *chunks), dtype=np.uint8, fill_value=0,
                dimension_names=("c", "y", "x"))
        (partial / DONE_FOLDER).mkdir()
        atomic_write(job_file, json.dumps({"job": key, "mean": stats[0], "std": stats[1]}).encode())
    return GigapixelJob(
        source=str(src.resolve()), partial=str(partial), shape=shape, dtype=str(np.dtype(source.dtype)),
        chunk=chunks, plan=plan, classes=classes, probabilities=probabilities, mean=stats[0], std=stats[1],
        max_pixels=max_pixels,
    )


def _levels(height: int, width: int, chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels: halved (rounding up) until one chunk holds the level."""
    levels = [(height, width)]
    while levels[-1][0] > chunks[0] or levels[-1][1] > chunks[1]:
        h, w = levels[-1]
        levels.append((-(-h // 2), -(-w // 2)))
    return levels


def build_pyramid(group, chunks: tuple[int, int], client) -> int:
    """Write levels ``1..n`` of ``group`` from level ``0``, each the previous one's every other
    pixel (nearest: exact for class indices), through dask (on the cluster if there is one)."""
    import dask.array as da

    base = group["0"]
    shape = base.shape[-2:]
    levels = _levels(*shape, chunks)
    lead = base.shape[:-2]
    for level in range(1, len(levels)):
        previous = da.from_zarr(group[str(level - 1)])
        halved = previous[..., ::2, ::2].rechunk((*lead, *chunks))
        target = group.create_array(str(level), shape=(*lead, *levels[level]), chunks=(*lead, *chunks), dtype=base.dtype,
                                    fill_value=0, dimension_names=base.metadata.dimension_names, overwrite=True)
        if client is None:
            da.store(halved, target, lock=False, scheduler="synchronous")
        else:
            client.compute(da.store(halved, target, lock=False, compute=False)).result()
    return len(levels)


def write_metadata(group, name: str, levels: int, axes: list[dict]) -> None:
    """OME-NGFF 0.5 multiscales metadata through ome-zarr (scale 2**level on y and x)."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    lead = [1.0] * (len(axes) - 2)
    datasets = [
        {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [*lead, 2.0**level, 2.0**level]}]}
        for level in range(levels)
    ]
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=axes, name=name)


def finish(partial: Path, output: Path, job: GigapixelJob, spec: PredictorSpec, predictor, key: str,
           tiff_path: Path | None, client) -> int:
    """Zarr temporaries of killed writers removed; pyramid, metadata, optional BigTIFF; then
    markers removed and the output renamed in place."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata

    sweep_temporaries(partial)
    group = zarr.open_group(str(partial), mode="r+")
    levels = build_pyramid(group, job.chunk, client)
    write_metadata(group, output_stem(output), levels, SPACE_AXES)
    classes = predictor.info.classes
    add_metadata(group, {"image-label": {
        "version": FormatV05().version,
        "colors": [{"label-value": i, "rgba": [*map(int, PALETTE[i % len(PALETTE)]), 255]} for i in range(1, len(classes))],
        "properties": [{"label-value": i, "class": name} for i, name in enumerate(classes)],
    }}, fmt=FormatV05())
    group.attrs["tessera"] = {
        "job": key, "bundle_sha256": spec.sha256, "tile": spec.tile, "tta": spec.tta, "classes": list(classes),
        "threshold": predictor.threshold, "chunk": list(job.chunk), "values": "class index",
        **({"probabilities": {"path": PROBABILITIES, "values": "round(255 p)", "scale": 1 / 255}} if job.probabilities else {}),
    }
    if job.probabilities:
        probabilities = group[PROBABILITIES]
        build_pyramid(probabilities, job.chunk, client)
        write_metadata(probabilities, PROBABILITIES, levels, [CHANNEL_AXIS, *SPACE_AXES])
    if tiff_path is not None:
        write_tiff(partial, tiff_path, job.chunk[0])
    shutil.rmtree(partial / DONE_FOLDER)
    (partial / JOB_FILE).unlink()
    move_into_place(partial, output)
    return levels


def write_tiff(store: Path, path: Path, rows: int) -> None:
    """Stream the full-resolution labels of an OME-Zarr into a tiled BigTIFF, ``rows`` at a time."""
    import zarr

    labels = zarr.open_array(str(store / "0"), mode="r")
    height, width = labels.shape
    with open_sink(path, (height, width), labels.dtype) as sink:
        for y0 in range(0, height, rows):
            y1 = min(y0 + rows, height)
            sink.write((y0, y1, 0, width), np.asarray(labels[y0:y1, :]))
