"""Asynchronous segmentation jobs: an uploaded image file streamed through the tiler into a file.

The HTTP task ``segment_job`` (:mod:`service.http.app`) calls :func:`segment_file`. The upload is a
file on disk (BentoML writes the multipart part to a request temporary directory); a TIFF/BigTIFF
is opened lazily (:func:`service.http.uploads.open_upload`) and the labels are written tile by tile
into a file by :func:`training.inference.to_file.predict_to_file`, so memory is bounded by the tile
batch and the sink's row bands, not by the image:

* ``tiff`` -- a tiled, zlib-compressed BigTIFF of class indices (what ``tessera predict -o x.tif``
  writes);
* ``zarr`` -- a zarr v3 array of class indices chunked on the tile grid (what ``tessera predict
  -o x.zarr`` writes), packed into one zip file (entries at the root, stored uncompressed as the
  zarr zip-store convention asks; the chunks are already compressed), which
  ``zarr.open(zarr.storage.ZipStore(path, mode="r"))`` reads back.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from training.inference.predictor import Predictor
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


def segment_file(predictor: Predictor, source: ArrayLike2D, fmt: JobFormat, work: Path) -> JobResult:
    """Segment ``source`` tile by tile into a ``fmt`` label file inside the directory ``work``
    (:func:`training.inference.to_file.predict_to_file`, what ``tessera predict`` writes with)."""
    output = work / ("labels.zarr" if fmt == JobFormat.zarr else "labels.tif")
    grid = predict_to_file(predictor, source, output)
    pixels = grid.height * grid.width
    if fmt == JobFormat.zarr:
        return JobResult(zip_directory(output, work / "labels.zarr.zip"), "application/zip", "labels.zarr.zip", pixels)
    return JobResult(output, "image/tiff", "labels.tif", pixels)
