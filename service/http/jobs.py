"""Asynchronous segmentation jobs: an uploaded image file streamed through the tiler into a file.

The job system (:mod:`service.http.jobrunner`) calls :func:`segment_file`. The upload is a file on
disk (spooled as it arrived, :mod:`service.http.spool`); a TIFF/BigTIFF
is opened lazily (:func:`service.http.uploads.open_upload`) and the labels are written tile by tile
into a file by :func:`training.inference.to_file.predict_to_file`, so memory is bounded by the tile
batch and the sink's row bands, not by the image:

* ``tiff`` -- a tiled, zlib-compressed BigTIFF of class indices (what ``tessera predict -o x.tif``
  writes);
* ``zarr`` -- a zarr v3 array of class indices chunked on the tile grid (what ``tessera predict
  -o x.zarr`` writes), packed into one zip file (entries at the root, stored uncompressed as the
  zarr zip-store convention asks; the chunks are already compressed), which
  ``zarr.open(zarr.storage.ZipStore(path, mode="r"))`` reads back. For a whole-slide image (a job
  by ``path=``) the store is the OME-Zarr label image ``tessera predict`` writes for slides
  (labels at ``0``, pyramid, axes in micrometres).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from training.inference.predictor import Predictor, Progress
from training.inference.slide import prepare_slide
from training.inference.to_file import predict_to_file
from training.mirror import ArrayLike2D


class JobFormat(str, Enum):
    """The file a segmentation job produces."""

    tiff = "tiff"  # tiled BigTIFF of class indices
    zarr = "zarr"  # zarr v3 store of class indices, zipped


@dataclass(frozen=True)
class JobResult:
    """A finished job's file, its media type and the file name offered to the client."""

    path: Path
    media_type: str
    filename: str
    pixels: int


def zip_directory(directory: Path, target: Path) -> Path:
    """Pack every file under ``directory`` into the zip ``target`` (paths relative to it, stored)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(directory).as_posix())
    return target


def segment_file(predictor: Predictor, source: ArrayLike2D, fmt: JobFormat, work: Path, progress: Progress | None = None) -> JobResult:
    """Segment ``source`` tile by tile into a ``fmt`` label file inside the directory ``work``
    (:func:`training.inference.to_file.predict_to_file`, what ``tessera predict`` writes with);
    ``progress(tiles done, total)`` after every tile batch: an exception it raises stops the job
    there and the sink deletes its partial file."""
    output = work / ("labels.zarr" if fmt == JobFormat.zarr else "labels.tif")
    grid = predict_to_file(predictor, source, output, progress=progress)
    pixels = grid.height * grid.width
    if fmt == JobFormat.zarr:
        return JobResult(zip_directory(output, work / "labels.zarr.zip"), "application/zip", "labels.zarr.zip", pixels)
    return JobResult(output, "image/tiff", "labels.tif", pixels)


def segment_slide_file(predictor: Predictor, slide: Path, fmt: JobFormat, work: Path, progress: Progress | None = None,
                       started: Callable[[tuple[int, int]], None] | None = None) -> JobResult:
    """Segment a whole-slide image like :func:`segment_file`: at the bundle's ``data.mpp`` (else
    level 0), tiles without tissue skipped when the model has a class named ``background``, a
    ``zarr`` result the OME-Zarr label image; ``started(size)`` once the resolution is chosen,
    before the first tile."""
    tissue = "auto" if "background" in predictor.info.classes else "none"
    job = prepare_slide(slide, predictor.info, tissue=tissue)
    try:
        if started is not None:
            started(tuple(job.source.shape[:2]))
        output = work / ("labels.zarr" if fmt == JobFormat.zarr else "labels.tif")
        grid = predict_to_file(predictor, job.source, output, attributes={"source": slide.name, **job.attributes()},
                               stats=job.stats(predictor.info.normalization), skip=job.skip, progress=progress,
                               label_image=True, mpp=job.resolution.mpp)
    finally:
        job.close()
    pixels = grid.height * grid.width
    if fmt == JobFormat.zarr:
        return JobResult(zip_directory(output, work / "labels.zarr.zip"), "application/zip", "labels.zarr.zip", pixels)
    return JobResult(output, "image/tiff", "labels.tif", pixels)
