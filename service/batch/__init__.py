"""Batch segmentation jobs, the Python API behind ``tessera batch`` (one function per job kind).

    from service.batch import segment_folder, segment_gigapixel

    report = segment_folder("model.safetensors", "scans/", "masks/", overlay=True)
    report.ok, report.failed, report.to_dict()          # manifest: masks/manifest.jsonl

    report = segment_gigapixel("model.safetensors", "slide.tif", "out/", scheduler="local:2", tiff=True)
    report.output                                       # out/slide.zarr (OME-Zarr, zarr v3)

Both are resumable (rerun the same call after a crash or a kill), write every output through a
temporary name, and run in this process (``scheduler="in-process"``, the default), on a local
Dask cluster (``"local:N"``) or on an existing one (``"tcp://host:port"``) with byte-identical
results. See :mod:`service.batch.folder`, :mod:`service.batch.gigapixel` and
:mod:`service.batch.scheduler`.
"""

from __future__ import annotations

from pathlib import Path

from service.batch.folder import FolderOptions, FolderReport, Progress, run_folder
from service.batch.gigapixel import GigapixelReport, is_gigapixel_source, run_gigapixel
from service.batch.scheduler import IN_PROCESS, PredictorSpec, open_runner, parse_scheduler
from training.bundle import BundleError
from training.errors import OptionError
from training.inference.blending import DEFAULT_OVERLAP
from training.bundle import DEFAULT_BUNDLE, file_sha256
from training.io.images import DEFAULT_MAX_PIXELS
from training.inference.predictor import Predictor, tta_mode

__all__ = ["segment_folder", "segment_gigapixel", "FolderReport", "GigapixelReport", "is_gigapixel_source"]


def prepare(bundle, tile, batch_size, tta, device, blend: str = "none",
            overlap: float = DEFAULT_OVERLAP, threshold: float | str | None = "bundle") -> tuple[PredictorSpec, Predictor]:
    """The job's predictor, built here (it resolves ``tile="auto"`` once, for every worker), and
    the picklable spec workers rebuild it from."""
    path = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    predictor = Predictor(path, device=device, tile=tile, batch_size=batch_size, tta=tta_mode(tta),
                          blend=blend, overlap=overlap, threshold=threshold)
    spec = PredictorSpec(
        bundle=str(path.resolve()), sha256=file_sha256(path), tile=predictor.tile,
        batch_size=predictor.batch_size, tta=tta_mode(tta), device=str(device),
        blend=predictor.blend, overlap=predictor.overlap, threshold=threshold,
    )
    return spec, predictor


def segment_folder(
    bundle: str | Path | None,
    src: str | Path,
    dst: str | Path,
    *,
    scheduler: str = IN_PROCESS,
    overlay: bool = False,
    probabilities: bool = False,
    tile: int | str | None = None,
    batch_size: int | None = None,
    tta: bool | str = False,
    device: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    blend: str = "none",
    overlap: float = DEFAULT_OVERLAP,
    threshold: float | str | None = "bundle",
) -> FolderReport:
    """Segment every image of a folder, glob or listing into ``dst`` (see :mod:`service.batch.folder`);
    ``blend="gaussian"`` averages overlapping tiles (see :mod:`training.inference.blending`); ``threshold``
    as :class:`~training.inference.predictor.Predictor` takes it (default: the bundle's)."""
    parse_scheduler(scheduler)
    spec, predictor = prepare(bundle, tile, batch_size, tta, device, blend, overlap, threshold)
    runner = open_runner(scheduler, spec, predictor)
    try:
        options = FolderOptions(overlay=overlay, probabilities=probabilities, max_pixels=max_pixels)
        return run_folder(str(src), dst, spec, runner, options, progress)
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
    tile: int | str | None = None,
    batch_size: int | None = None,
    tta: bool | str = False,
    device: str = "auto",
    max_pixels: int | None = None,
    progress=None,
    blend: str = "none",
    overlap: float = DEFAULT_OVERLAP,
    threshold: float | str | None = "bundle",
) -> GigapixelReport:
    """Segment one large TIFF/BigTIFF/zarr image into ``dst/NAME.zarr`` (see :mod:`service.batch.gigapixel`).

    ``blend`` must be ``"none"`` for now: the gigapixel job's resume key does not record blending
    yet, so a rerun with other settings could mix chunks of both."""
    parse_scheduler(scheduler)
    if blend != "none":
        raise OptionError("blend='gaussian' (--blend gaussian) is available for single images and folder jobs, "
                         "not yet for gigapixel jobs")
    if not is_gigapixel_source(src):
        raise OptionError(f"{src}: not an existing TIFF/BigTIFF or zarr image")
    spec, predictor = prepare(bundle, tile, batch_size, tta, device, threshold=threshold)
    runner = open_runner(scheduler, spec, predictor)
    try:
        return run_gigapixel(src, dst, spec, predictor, runner, probabilities, tiff, chunk, max_pixels, progress)
    finally:
        runner.close()
