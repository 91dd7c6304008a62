"""Batch segmentation jobs, the Python API behind ``tessera batch`` (one function per job kind).

    from service.batch import segment_folder, segment_gigapixel

    report = segment_folder("model.safetensors", "scans/", "masks/", overlay=True)
    report.ok, report.failed, report.to_dict()          # manifest: masks/manifest.jsonl

    report = segment_gigapixel("model.safetensors", "slide.tif", "out/", scheduler="local:2", tiff=True)
    report.output                                       # out/slide.zarr (OME-Zarr, zarr v3)

    segment_folder(None, "scans/", "masks/", options=InferenceOptions(tile=572, blend="gaussian"))
    segment_folder(None, "scans/", "masks/", tile=572, blend="gaussian")     # the same

Both are resumable (rerun the same call after a crash or a kill), write every output through a
temporary name, and run in this process (``scheduler="in-process"``, the default), on a local
Dask cluster (``"local:N"``) or on an existing one (``"tcp://host:port"``) with byte-identical
results. See :mod:`service.batch.folder`, :mod:`service.batch.gigapixel` and
:mod:`service.batch.scheduler`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.batch.folder import FolderOptions, FolderReport, Progress, run_folder
from service.batch.gigapixel import GigapixelReport, is_gigapixel_source, run_gigapixel
from service.batch.scheduler import (
    IN_PROCESS,
    PredictorSpec,
    open_runner,
    parse_scheduler,
)
from training.bundle import DEFAULT_BUNDLE, file_sha256
from training.errors import OptionError
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.io.images import DEFAULT_MAX_PIXELS

__all__ = ["segment_folder", "segment_gigapixel", "FolderReport", "GigapixelReport", "is_gigapixel_source"]


def prepare(bundle: str | Path | None, options: InferenceOptions | None = None, **settings: Any) -> tuple[PredictorSpec, Predictor]:
    """The job's predictor, built here (it resolves ``tile="auto"`` and the batch size once, for
    every worker), and the picklable spec workers rebuild it from. ``options`` / ``settings`` as
    :class:`~training.inference.predictor.Predictor` takes them; ``bundle`` None: the shipped model."""
    path = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    predictor = Predictor(path, options, **settings)
    spec = PredictorSpec(bundle=str(path.resolve()), sha256=file_sha256(path), options=predictor.options)
    return spec, predictor


def segment_folder(
    bundle: str | Path | None,
    src: str | Path,
    dst: str | Path,
    *,
    scheduler: str = IN_PROCESS,
    overlay: bool = False,
    probabilities: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    options: InferenceOptions | None = None,
    **settings: Any,
) -> FolderReport:
    """Segment every image of a folder, glob or listing into ``dst`` (see :mod:`service.batch.folder`).

    ``options`` (or the same fields as keywords, ``settings``: ``tile=``, ``blend="gaussian"``,
    ``threshold=`` ...) are the :class:`~training.inference.options.InferenceOptions`."""
    parse_scheduler(scheduler)
    spec, predictor = prepare(bundle, options, **settings)
    runner = open_runner(scheduler, spec, predictor)
    try:
        folder_options = FolderOptions(overlay=overlay, probabilities=probabilities, max_pixels=max_pixels)
        return run_folder(str(src), dst, spec, runner, folder_options, progress)
    finally:
        runner.close()


def segment_gigapixel(
    bundle: str | Path | None,
    src: str | Path,
    dst: str | Path,
    *,
    scheduler: str = IN_PROCESS,
    probabilities: bool = False,
    tiff: bool = False,
    chunk: int | None = None,
    max_pixels: int | None = None,
    progress=None,
    options: InferenceOptions | None = None,
    slide: dict | None = None,
    tile_progress=None,
    **settings: Any,
) -> GigapixelReport:
    """Segment one large TIFF/BigTIFF/zarr image or whole-slide image into ``dst/NAME.zarr`` (see
    :mod:`service.batch.gigapixel`).

    ``options`` / ``settings`` as for :func:`segment_folder` (blending included); ``slide``: for a
    whole-slide image, ``mpp``, ``level``, ``tissue`` (auto, none or a mask file) and ``background``
    as :func:`training.inference.slide.prepare_slide` takes them (default: tissue auto).
    ``progress(chunks_done, chunks)``, ``tile_progress(tiles_done, tiles_to_compute, note=...)``: see
    :mod:`service.batch.gigapixel.progress`; ``dst/manifest.jsonl`` holds the same figures."""
    parse_scheduler(scheduler)
    if not is_gigapixel_source(src):
        raise OptionError(f"{src}: not an existing TIFF/BigTIFF, zarr or whole-slide image")
    spec, predictor = prepare(bundle, options, **settings)
    runner = open_runner(scheduler, spec, predictor)
    try:
        return run_gigapixel(src, dst, spec, predictor, runner, probabilities, tiff, chunk, max_pixels, progress, slide,
                             tile_progress)
    finally:
        runner.close()
