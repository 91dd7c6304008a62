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

How the work is cut: the output is chunked on the predictor's tile grid (a chunk is a whole
number of tile steps, about :data:`CHUNK_TARGET` pixels), and each chunk is one task:
:meth:`~training.predictor.Predictor.predict_region` of that box of the lazily read input,
with the whole image's normalisation statistics (computed once, streamed, before the tasks).
A region call uses the whole image's tile grid and mirrors only at the true image border
(:mod:`training.mirror`), so every chunk is byte-identical to the same block of ``tessera
predict`` on the whole image -- for valid and same padding alike -- whatever runs it (this
process or any Dask worker). Each task reads its input window (chunk + model context) from the
file itself; no halo is shipped between workers.

Resuming: while running, the output lives in ``DST/.NAME.zarr.partial``. A task writes its
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.batch.files import atomic_write, job_lock, sweep_temporaries
from service.batch.scheduler import PredictorSpec, predictor_for
from training.overlay import PALETTE
from training.readers import TIFF_SUFFIXES, ZARR_SUFFIXES, fit_channels, open_image
from training.writers import encode_probabilities, label_dtype, move_into_place, open_sink

#: Aimed-for chunk edge in output pixels (rounded to a whole number of tile steps).
CHUNK_TARGET = 1024
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

#: Sources opened in this process, by path (workers keep the file open across tasks).
_SOURCES: dict[tuple[str, int], object] = {}


@dataclass(frozen=True)
class GigapixelJob:
    """What every chunk task needs (picklable): the input, the partial output, the chunking and
    the whole image's normalisation statistics."""

    source: str
    partial: str
    height: int
    width: int
    chunk: tuple[int, int]
    classes: int
    probabilities: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int | None

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.chunk[0]), -(-self.width // self.chunk[1])

    def chunks(self) -> list[tuple[int, int]]:
        rows, cols = self.grid
        return [(r, c) for r in range(rows) for c in range(cols)]

    def box(self, index: tuple[int, int]) -> tuple[int, int, int, int]:
        (r, c), (ch, cw) = index, self.chunk
        return r * ch, min((r + 1) * ch, self.height), c * cw, min((c + 1) * cw, self.width)


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


def chunk_shape(height: int, width: int, step_h: int, step_w: int, chunk: int | None) -> tuple[int, int]:
    """Chunk edges: whole numbers of tile steps, about ``chunk`` (default CHUNK_TARGET) pixels,
    no more steps than the image needs."""
    target = chunk or CHUNK_TARGET
    if target < 1:
        raise ValueError(f"chunk must be >= 1 pixel, not {target}")

    def edge(length: int, step: int) -> int:
        return step * min(max(1, round(target / step)), -(-length // step))

    return edge(height, step_h), edge(width, step_w)


def source_fingerprint(path: Path) -> dict:
    """Identity of the input for resuming: size and modification time (of zarr metadata for a store)."""
    files = [path] if path.is_file() else sorted(path.rglob("zarr.json"))
    return {"path": str(path.resolve()), "files": [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def marker(partial: Path, index: tuple[int, int]) -> Path:
    return partial / DONE_FOLDER / f"{index[0]}.{index[1]}"


# ---------------------------------------------------------------------------------- the task
def _open_source(job: GigapixelJob, in_channels: int):
    key = (job.source, in_channels)
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = fit_channels(open_image(job.source, max_pixels=job.max_pixels), in_channels)
    return _SOURCES[key]


def segment_chunk(index: tuple[int, int], job: GigapixelJob, spec: PredictorSpec) -> dict:
    """Segment one output chunk, write it into the partial output, then its done-marker."""
    import zarr

    started = time.perf_counter()
    predictor = predictor_for(spec)
    source = _open_source(job, predictor.info.in_channels)
    y0, y1, x0, x1 = job.box(index)
    stats = (np.asarray(job.mean, np.float64), np.asarray(job.std, np.float64))
    prediction = predictor.predict_region(source, y0, y1, x0, x1, stats, probabilities=job.probabilities)
    group = zarr.open_group(job.partial, mode="r+")
    group["0"][y0:y1, x0:x1] = prediction.labels
    if job.probabilities:
        group[f"{PROBABILITIES}/0"][:, y0:y1, x0:x1] = encode_probabilities(prediction.probabilities, np.uint8)
    marker(Path(job.partial), index).touch()
    return {"chunk": list(index), "seconds": round(time.perf_counter() - started, 4)}


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
        raise ValueError(f"{src}: the output would overwrite the input; choose another DST")
    report = GigapixelReport(src=str(src), dst=str(root), output=str(output), scheduler=runner.description,
                             tiff=str(tiff_path) if tiff_path else None)
    with job_lock(root):
        sweep_temporaries(root)
        source = fit_channels(open_image(src, max_pixels=max_pixels), predictor.info.in_channels)
        height, width = (int(n) for n in source.shape[:2])
        grid = predictor.grid(height, width)
        chunks = chunk_shape(height, width, grid.step_h, grid.step_w, chunk)
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
        job = _open_partial(partial, key, src, source, predictor, (height, width), chunks, probabilities, max_pixels)
        indices = job.chunks()
        pending = [i for i in indices if not marker(partial, i).exists()]
        report.chunks, report.resumed = len(indices), len(indices) - len(pending)
        done = report.resumed
        if progress is not None:
            progress(done, len(indices))
        for _ in runner.map(segment_chunk, pending, job=job, spec=spec):
            done += 1
            report.computed += 1
            if progress is not None:
                progress(done, len(indices))
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


def _open_partial(partial, key, src, source, predictor, shape, chunks, probabilities, max_pixels) -> GigapixelJob:
    """The job of an unfinished output with this key (resumed), or a fresh partial output."""
    import zarr

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
        group.create_array("0", shape=shape, chunks=chunks, dtype=label_dtype(classes), fill_value=0,
                           dimension_names=("y", "x"))
        if probabilities:
            group.create_group(PROBABILITIES).create_array(
                "0", shape=(classes, *shape), chunks=(classes, *chunks), dtype=np.uint8, fill_value=0,
                dimension_names=("c", "y", "x"))
        (partial / DONE_FOLDER).mkdir()
        atomic_write(job_file, json.dumps({"job": key, "mean": stats[0], "std": stats[1]}).encode())
    return GigapixelJob(
        source=str(src.resolve()), partial=str(partial), height=shape[0], width=shape[1], chunk=chunks,
        classes=classes, probabilities=probabilities, mean=stats[0], std=stats[1], max_pixels=max_pixels,
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
    """Pyramid, metadata, optional BigTIFF; then markers removed and the output renamed in place."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata

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
        "chunk": list(job.chunk), "values": "class index",
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
