"""Image sources for the tiler: arrays read lazily, window by window.

A *source* is anything with ``shape == (H, W)`` or ``(H, W, C)``, ``dtype`` and numpy slicing of
the first two axes (``source[y0:y1, x0:x1]`` -> ndarray). The tiler reads each tile's window
through :func:`training.mirror.mirror_window`, which touches only the window's bounding box, so a
TIFF or zarr image larger than memory is never loaded whole.

* TIFF / BigTIFF (``.tif``, ``.tiff``, ``.btf``): the first series' full-resolution level through
  tifffile's zarr store (``aszarr``): tiled or striped files are decoded tile by tile, on the grid
  their orientation tag gives (:class:`training.io.images.Oriented`);
* zarr v3 (``.zarr``): an array, or an OME-Zarr group (its full-resolution ``"0"`` array);
* PNG, JPEG, BMP ...: decoded in memory by :func:`training.io.images.read_image` (the one decoding
  policy, with its header-first pixel limit);
* in-memory numpy arrays are sources as they are.

Channel-first layouts (``(C, H, W)`` with C <= 4, planar TIFFs) are presented channels-last.
:func:`fit_channels` adapts a gray source to an RGB model (replicated), as
:func:`training.io.images.match_channels` does for decoded images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from training.io.images import (
    DEFAULT_MAX_PIXELS,
    TIFF_SUFFIXES,
    ImageError,
    match_channels,
    oriented,
    read_image,
    tiff_orientation,
)
from training.mirror import ArrayLike2D

#: File suffixes read lazily: TIFF (:data:`training.io.images.TIFF_SUFFIXES`) and zarr.
ZARR_SUFFIXES = (".zarr",)
#: Pixel types a source may have (what decoding produces, plus what lazy files commonly hold).
SOURCE_DTYPES = (np.uint8, np.uint16, np.float32, np.int8, np.int16, np.uint32, np.int32, np.float64, np.float16)
#: Pixel limit meaning 'none' for in-memory decoding.
NO_LIMIT = 2**62
#: Largest channel axis recognised as channels (RGBA).
MAX_CHANNELS = 4


class ChannelsLast:
    """A ``(C, H, W)`` array presented as ``(H, W, C)``, reading only the windows asked for."""

    def __init__(self, array) -> None:
        self.array = array
        channels, height, width = array.shape
        self.shape = (height, width, channels)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return np.moveaxis(np.asarray(self.array[:, rows, cols]), 0, -1)


class ReplicatedGray:
    """A gray ``(H, W)`` source presented with ``channels`` identical channels."""

    def __init__(self, source: ArrayLike2D, channels: int) -> None:
        self.source = source
        self.shape = (*source.shape[:2], channels)
        self.dtype = np.dtype(source.dtype)

    def __getitem__(self, key) -> np.ndarray:
        block = np.asarray(self.source[key])
        return np.repeat(block[..., None], self.shape[2], axis=-1)


def as_source(array, name: str = "image") -> ArrayLike2D:
    """Check an array-like's layout and present it as ``(H, W)`` or ``(H, W, C)``."""
    shape = tuple(int(n) for n in array.shape)
    if len(shape) == 3 and shape[0] <= MAX_CHANNELS < shape[2]:
        array, shape = ChannelsLast(array), (shape[1], shape[2], shape[0])
    if len(shape) == 3 and shape[2] == 1:
        raise ImageError(f"{name}: single-channel images must be 2-D, not {shape}", "shape")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > MAX_CHANNELS):
        raise ImageError(f"{name}: shape {shape} is not a 2-D gray or colour image", "shape")
    if shape[0] < 1 or shape[1] < 1:
        raise ImageError(f"{name}: image has no pixels ({shape[1]}x{shape[0]})", "shape")
    if np.dtype(array.dtype) not in [np.dtype(t) for t in SOURCE_DTYPES]:
        raise ImageError(f"{name}: pixel type {array.dtype} is not supported", "unsupported")
    return array


def check_pixels(source: ArrayLike2D, max_pixels: int | None, name: str = "image") -> None:
    """Refuse a source above ``max_pixels`` (height x width) with reason ``too_large``."""
    height, width = source.shape[:2]
    if max_pixels is not None and height * width > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            "too_large",
        )


def open_tiff(path: str | Path) -> ArrayLike2D:
    """The first image of a TIFF/BigTIFF, full resolution, as a lazy zarr array."""
    import zarr  # noqa: PLC0415  zarr only for .zarr inputs

    try:
        tiff = tifffile.TiffFile(path)
    except Exception as error:  # tifffile raises many types for broken files
        raise ImageError(f"{path}: TIFF cannot be read ({error})", "corrupt") from None
    if not tiff.series:
        raise ImageError(f"{path}: TIFF holds no image", "corrupt")
    series = tiff.series[0]
    if len(series.shape) > 3 or (len(series.shape) == 3 and "S" not in series.axes and series.shape[0] > MAX_CHANNELS):
        raise ImageError(f"{path}: TIFF series has shape {series.shape} ({series.axes}); one 2-D image expected", "shape")
    try:
        array = zarr.open_array(series.aszarr(level=0), mode="r")
    except Exception as error:
        raise ImageError(f"{path}: TIFF cannot be read lazily ({error})", "corrupt") from None
    return oriented(as_source(array, str(path)), tiff_orientation(series.keyframe))


def open_zarr(path: str | Path) -> ArrayLike2D:
    """A zarr array, or the full-resolution ``"0"`` array of an OME-Zarr group."""
    import zarr  # noqa: PLC0415  zarr only for .zarr inputs

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ImageError(f"{path}: not a readable zarr store ({error})", "corrupt") from None
    if isinstance(node, zarr.Group):
        if "0" not in node:
            raise ImageError(f"{path}: zarr group without a full-resolution array '0'", "shape")
        node = node["0"]
    return as_source(node, str(path))


def open_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ArrayLike2D:
    """Open an image file as a source: TIFF and zarr lazily, other formats decoded in memory.

    Raises :class:`~training.io.images.ImageError` (reasons: corrupt, unsupported, shape,
    too_large) naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file", "corrupt")
    suffix = path.suffix.lower()
    if suffix in ZARR_SUFFIXES:
        source = open_zarr(path)
    elif suffix in TIFF_SUFFIXES:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file", "empty")
        source = open_tiff(path)
    else:
        return read_image(path, max_pixels=max_pixels if max_pixels is not None else NO_LIMIT)
    check_pixels(source, max_pixels, str(path))
    return source


def fit_channels(source: ArrayLike2D, in_channels: int) -> ArrayLike2D:
    """A source with the model's channel count: gray replicated to RGB, anything else refused."""
    if isinstance(source, np.ndarray):
        return match_channels(source, in_channels)
    have = 1 if len(source.shape) == 2 else source.shape[2]
    if have == in_channels:
        return source
    if have == 1 and in_channels == 3:
        return ReplicatedGray(source, in_channels)
    raise ImageError(f"image has {have} channel(s), the model takes {in_channels}", "channels")
