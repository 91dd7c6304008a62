"""Running a gigapixel job: plan, resume or start the partial output, compute the pending chunks
with a runner, then write the OME-Zarr and move it into place (see :mod:`service.batch.gigapixel`)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service.batch.files import job_lock, sweep_temporaries
from service.batch.gigapixel.graph import padded_input, window_work
from service.batch.gigapixel.plan import GigapixelJob, plan_chunks
from service.batch.gigapixel.progress import JobProgress, TileProgress, tiles_per_chunk
from service.batch.gigapixel.slides import TISSUE_FILE, open_slide_job, skipped_tiles, slide_key, with_slide
from service.batch.gigapixel.state import (
    DONE_FOLDER,
    JOB_FILE,
    PARTIAL_SUFFIX,
    gigapixel_key,
    is_complete,
    marker,
    open_partial,
    output_stem,
)
from service.batch.scheduler import PredictorSpec
from training.errors import OptionError
from training.io.omezarr import (
    PROBABILITIES,
    pyramid_levels,
    write_label_image,
    write_tiff,
)
from training.io.readers import fit_channels, open_image
from training.io.writers import move_into_place

Progress = Callable[[int, int], None]


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
    tiles: int = 0
    tiles_skipped: int = 0
    skipped_share: float = 0.0
    slide: dict | None = None
    tissue_mask: str | None = None

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


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
    slide: dict | None = None,
    tile_progress: TileProgress | None = None,
) -> GigapixelReport:
    """Run a gigapixel job with ``runner``; ``predictor`` (built from ``spec`` in this process)
    plans the grid and computes the normalisation statistics. A whole-slide input is read as
    :mod:`service.batch.gigapixel.slides` says (``slide``: mpp, level, tissue, background).
    ``progress(chunks_done, chunks)`` and ``tile_progress(tiles_done, tiles_to_compute, note=...)``
    follow the work; the job's record in ``dst/manifest.jsonl`` carries the same figures
    (:mod:`service.batch.gigapixel.progress`)."""
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
        slide_job = open_slide_job(src, predictor, slide)
        with contextlib.closing(slide_job) if slide_job is not None else contextlib.nullcontext():
            source = slide_job.source if slide_job is not None else open_image(src, max_pixels=max_pixels)
            source = fit_channels(source, predictor.info.in_channels)
            height, width = (int(n) for n in source.shape[:2])
            plan, chunks = plan_chunks(predictor, height, width, chunk)
            key = gigapixel_key(spec, src, (height, width), chunks, probabilities, **slide_key(slide_job))
            report.shape, report.chunk = [height, width], list(chunks)
            counts = describe_slide(report, slide_job, predictor, output)
            record = {"input": src.name, "kind": "gigapixel", "output": output.name, "job": key}
            tracker = JobProgress(root, record, counts, tile_progress, progress)
            with reported(tracker, report):
                if is_complete(output, key):
                    report_complete(report, output, tiff_path)
                    tracker.resume(counts)
                else:
                    partial = root / f".{output.name}{PARTIAL_SUFFIX}"
                    statistics = (lambda: slide_job.stats(predictor.info.normalization)) if slide_job is not None else None
                    job = open_partial(partial, key, src, source, predictor, plan, chunks, probabilities, max_pixels, statistics)
                    job = with_slide(job, slide_job)
                    compute_pending(job, spec, runner, report, tracker)
                    report.levels = finish(partial, output, job, spec, predictor, key, tiff_path, runner.client, report.slide)
                    if slide_job is not None:
                        slide_job.write_mask(root / f"{stem}.tissue.png")
    report.seconds = round(time.perf_counter() - started, 3)
    return report


@contextlib.contextmanager
def reported(tracker: JobProgress, report: GigapixelReport):
    """The job's last manifest record: ``ok`` with the report's figures, else ``failed`` (or
    ``stopped`` for an interrupt) with the error."""
    try:
        yield
    except BaseException as error:
        status = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
        tracker.finish(status, error=f"{type(error).__name__}: {error}"[:500])
        raise
    tracker.finish("ok", computed=report.computed, resumed=report.resumed, levels=report.levels,
                   complete_before=report.complete_before)


def describe_slide(report: GigapixelReport, slide_job, predictor, output: Path) -> dict:
    """The report's tile counts, and for a slide its resolution, tissue and mask file. Returns
    the tiles of each chunk (:func:`~service.batch.gigapixel.progress.tiles_per_chunk`)."""
    grid = predictor.grid(*report.shape)
    counts = tiles_per_chunk(grid, tuple(report.chunk), skipped_tiles(slide_job, grid))
    report.tiles = sum(n for n, _ in counts.values())
    report.tiles_skipped = sum(s for _, s in counts.values())
    report.skipped_share = round(report.tiles_skipped / max(report.tiles, 1), 6)
    if slide_job is not None:
        report.slide = slide_job.attributes()["slide"]
        if slide_job.tissue is not None:
            report.tissue_mask = str(output.with_name(f"{output_stem(output)}.tissue.png"))
    return counts


def report_complete(report: GigapixelReport, output: Path, tiff_path: Path | None) -> None:
    """Account for an output this very job already finished (writing the BigTIFF if it was
    asked for only now)."""
    height, width = report.shape
    chunks = tuple(report.chunk)
    report.complete_before = True
    report.levels = len(pyramid_levels(height, width, chunks))
    report.chunks = -(-height // chunks[0]) * -(-width // chunks[1])
    report.resumed = report.chunks
    if tiff_path is not None and not tiff_path.exists():
        write_tiff(output, tiff_path, chunks[0])


def compute_pending(job: GigapixelJob, spec: PredictorSpec, runner, report: GigapixelReport,
                    tracker: JobProgress) -> None:
    """Compute the chunks without a done-marker with ``runner``; RuntimeError if any is left."""
    partial = Path(job.partial)
    indices = job.chunks()
    pending = [i for i in indices if not marker(partial, i).exists()]
    report.chunks, report.resumed = len(indices), len(indices) - len(pending)
    tracker.resume(set(indices) - set(pending))

    def written(result) -> None:
        report.computed += 1
        tracker.chunk_done(job.chunk_at(result.ravel()[0]))

    runner.compute(window_work(padded_input(job), job, spec, pending), written)
    missing = [i for i in indices if not marker(partial, i).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} chunk(s) have no done-marker after the run; rerun the job")


def finish(partial: Path, output: Path, job: GigapixelJob, spec: PredictorSpec, predictor, key: str,
           tiff_path: Path | None, client, slide: dict | None = None) -> int:
    """Zarr temporaries of killed writers removed; pyramid, metadata, optional BigTIFF; then
    markers removed and the output renamed in place. Returns the number of pyramid levels."""
    import zarr  # noqa: PLC0415  gigapixel jobs only; service.batch loads this package for folder jobs too

    sweep_temporaries(partial)
    options = spec.options
    attributes = {
        "job": key, "bundle_sha256": spec.sha256, "tile": predictor.tile_for(*job.shape[:2]), "tta": options.tta,
        "classes": list(predictor.info.classes), "threshold": predictor.threshold, "chunk": list(job.chunk),
        "values": "class index",
        **({"blend": {"mode": options.blend, "overlap": options.overlap, "sigma_scale": options.sigma_scale}}
           if options.blend != "none" else {}),
        **({"probabilities": {"path": PROBABILITIES, "values": "round(255 p)", "scale": 1 / 255}} if job.probabilities else {}),
        **({"slide": slide} if slide is not None else {}),
    }
    group = zarr.open_group(str(partial), mode="r+")
    levels = write_label_image(group, output_stem(output), job.chunk, list(predictor.info.classes), job.probabilities,
                               attributes, client, slide.get("mpp") if slide else None)
    if (partial / TISSUE_FILE).exists():
        (partial / TISSUE_FILE).unlink()
    if tiff_path is not None:
        write_tiff(partial, tiff_path, job.chunk[0])
    shutil.rmtree(partial / DONE_FOLDER)
    (partial / JOB_FILE).unlink()
    move_into_place(partial, output)
    return levels
