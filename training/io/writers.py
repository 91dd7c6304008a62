"""Output sinks: where the tiler writes label maps and probabilities, block by block.

A sink receives ``write(box, block)`` calls, ``box = (y0, y1, x0, x1)`` in image pixels and
``block`` of shape ``(h, w)`` for labels or ``(K, h, w)`` for probabilities, already in the
sink's ``dtype``. File sinks are context managers: they write to a temporary name next to the
target and rename it into place only when the ``with`` block succeeds (an interrupted run leaves no
half-written output, a failed one removes its temporary file).

Stored values:

* labels: class indices, uint8 (uint16 above 256 classes) -- :func:`label_dtype`;
* probabilities: ``round(255 p)`` as uint8 (the default, 4x smaller) or float16 / float32 --
  :func:`encode_probabilities`.

Formats, chosen by :func:`open_sink` from the suffix:

* ``.zarr`` -- zarr v3, chunks on the tile grid (one chunk per tile, written as it completes);
* ``.tif`` / ``.tiff`` (``.btf``, ``.tf8``) -- tiled, zlib-compressed BigTIFF streamed in row bands (probabilities
  stored channels-last ``(H, W, K)``); memory is a few bands of the image width;
* ``.npy`` -- a memory-mapped numpy file;
* ``.png`` -- labels only, for small outputs (held in memory, encoded at the end; uint8 as 8-bit
  gray, uint16 as 16-bit).
"""

from __future__ import annotations

import errno
import io
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from training.errors import OptionError
from training.io.images import TIFF_SUFFIXES

Box = tuple[int, int, int, int]

#: Suffixes :func:`open_sink` understands.
ZARR_SUFFIX = ".zarr"
NPY_SUFFIX = ".npy"
PNG_SUFFIX = ".png"
#: Edge of the square tiles inside written TIFF files (a multiple of 16, as TIFF requires).
TIFF_TILE = 256
#: Largest image a PNG sink holds in memory (height x width).
PNG_MAX_PIXELS = 2**28
#: Probability storage types.
PROBABILITY_DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}


def label_dtype(classes: int) -> np.dtype:
    """uint8 class indices up to 256 classes, uint16 above."""
    return np.dtype(np.uint8 if classes <= 256 else np.uint16)


def encode_probabilities(probabilities: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Probabilities in [0, 1] as stored: uint8 quantised (``round(255 p)``), or a float type."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.rint(probabilities * np.float32(255.0)).astype(np.uint8)
    return probabilities.astype(dtype)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8 array."""
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        image = Image.fromarray(pixels.astype("<u2"), mode="I;16")
    elif pixels.dtype == np.uint8:
        image = Image.fromarray(pixels)
    else:
        raise ValueError(f"PNG stores uint8 or 2-D uint16 arrays, not {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class Sink:
    """Base of all sinks: ``shape``, ``dtype``, ``write``; context manager (commit / abort)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def write(self, box: Box, block: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def commit(self) -> None:
        """Finish and move the output into place."""

    def abort(self) -> None:
        """Drop everything written (temporary files removed)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class ArraySink(Sink):
    """A sink over anything with numpy slice assignment (numpy, zarr, a memory map), optionally
    holding only a region that starts at ``origin`` ``(y, x)`` of the image."""

    def __init__(self, array: Any, origin: tuple[int, int] = (0, 0)) -> None:
        self.array = array
        self.origin = origin
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)

    def write(self, box: Box, block: np.ndarray) -> None:
        y0, y1, x0, x1 = box
        oy, ox = self.origin
        self.array[..., y0 - oy : y1 - oy, x0 - ox : x1 - ox] = block


class TeeSink(Sink):
    """Writes every block to several sinks of the same kind (e.g. a file and an overlay buffer)."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks
        self.shape = sinks[0].shape
        self.dtype = sinks[0].dtype

    def write(self, box: Box, block: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write(box, block)


def as_sink(target: Any) -> Sink | None:
    """``target`` if it is a :class:`Sink`, else an :class:`ArraySink` over it (``None`` stays)."""
    if target is None or isinstance(target, Sink):
        return target
    return ArraySink(target)


def temporary_path(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (same file system, so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.unlink(name)
    return Path(name)


def move_into_place(temporary: Path, path: Path) -> None:
    """Rename ``temporary`` to ``path``, replacing an existing file or directory."""
    if path.is_dir() and not path.is_symlink():
        old = temporary_path(path)
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old)
    else:
        os.replace(temporary, path)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


class FileSink(ArraySink):
    """An :class:`ArraySink` over an array stored at a temporary path, renamed on commit."""

    def __init__(self, array: Any, temporary: Path, path: Path) -> None:
        super().__init__(array)
        self.temporary = temporary
        self.path = path

    def commit(self) -> None:
        flush = getattr(self.array, "flush", None)
        if flush is not None:
            flush()
        self.array = None
        move_into_place(self.temporary, self.path)

    def abort(self) -> None:
        self.array = None
        remove(self.temporary)


def zarr_sink(path: Path, shape: tuple[int, ...], dtype: np.dtype, chunk: tuple[int, int], attributes: dict) -> FileSink:
    """A zarr v3 array with one chunk per tile (all classes of a tile in one chunk)."""
    import zarr  # noqa: PLC0415  (zarr loads for .zarr outputs only, not with every Predictor: ~0.5 s)

    temporary = temporary_path(path)
    chunks = (*shape[:-2], *chunk)
    array = zarr.create_array(
        store=str(temporary), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=3, attributes=attributes
    )
    return FileSink(array, temporary, path)


def npy_sink(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> FileSink:
    """A memory-mapped ``.npy`` file, its disk space allocated up front: a full disk fails here with
    an OSError naming ``path``, not later inside the mapping, where it would kill the process (SIGBUS)."""
    temporary = temporary_path(path)
    array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
    try:
        allocate(temporary)
    except OSError as error:
        del array
        remove(temporary)
        raise OSError(error.errno, error.strerror, str(path)) from None
    return FileSink(array, temporary, path)


def allocate(path: Path) -> None:
    """Reserve the disk blocks of the whole (sparse) file ``path``; file systems that cannot are left as they are."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


class PngSink(Sink):
    """A small label map held in memory and encoded as PNG on commit."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        if len(shape) != 2:
            raise OptionError(f"{path}: PNG output is for label maps; write probabilities to .tif, .zarr or .npy")
        if shape[0] * shape[1] > PNG_MAX_PIXELS:
            raise OptionError(f"{path}: {shape[1]}x{shape[0]} is too large for PNG output; use .tif or .zarr")
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.array = np.zeros(shape, self.dtype)

    def write(self, box: Box, block: np.ndarray) -> None:
        y0, y1, x0, x1 = box
        self.array[y0:y1, x0:x1] = block

    def commit(self) -> None:
        temporary = temporary_path(self.path)
        try:
            temporary.write_bytes(encode_png(self.array))
            move_into_place(temporary, self.path)
        finally:
            remove(temporary)


class TiffSink(Sink):
    """A tiled BigTIFF written while blocks arrive, in row bands of :data:`TIFF_TILE` rows.

    tifffile pulls TIFF tiles from an iterator in a writer thread; a band's tiles are handed over
    as soon as every pixel of the band has been written, so blocks must arrive roughly row by row
    (the tiler's order). Probabilities ``(K, H, W)`` are stored channels-last.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.height, self.width = shape[-2:]
        self.samples = shape[0] if len(shape) == 3 else None
        self.temporary = temporary_path(path)
        self.bands: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.tiles: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        stored = (self.height, self.width) + ((self.samples,) if self.samples else ())
        options = {"photometric": "minisblack", "planarconfig": "contig"} if self.samples else {}

        def run() -> None:
            try:
                tifffile.imwrite(
                    self.temporary, data=self._tile_iterator(), shape=stored, dtype=self.dtype,
                    tile=(TIFF_TILE, TIFF_TILE), bigtiff=True, compression="zlib", **options,
                )
            except BaseException as error:  # reported to the writing side
                self.error = error

        self.thread = threading.Thread(target=run, name="tessera-tiff-writer", daemon=True)
        self.thread.start()

    def _tile_iterator(self):
        while (tiles := self.tiles.get()) is not None:
            yield from tiles

    def _band(self, index: int) -> np.ndarray:
        if index not in self.bands:
            rows = min(TIFF_TILE, self.height - index * TIFF_TILE)
            self.bands[index] = np.zeros((rows, self.width, *((self.samples,) if self.samples else ())), self.dtype)
            self.filled[index] = 0
        return self.bands[index]

    def _put(self, item) -> None:
        while True:
            if self.error is not None:
                raise OSError(getattr(self.error, "errno", None) or errno.EIO, f"TIFF writing failed ({self.error})", str(self.path)) from self.error
            try:
                self.tiles.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def write(self, box: Box, block: np.ndarray) -> None:
        y0, y1, x0, x1 = box
        if self.samples:
            block = np.moveaxis(block, 0, -1)
        for index in range(y0 // TIFF_TILE, -(-y1 // TIFF_TILE)):
            top = index * TIFF_TILE
            a, b = max(y0, top), min(y1, top + TIFF_TILE)
            band = self._band(index)
            band[a - top : b - top, x0:x1] = block[a - y0 : b - y0]
            self.filled[index] += (b - a) * (x1 - x0)
            if self.filled[index] == band.shape[0] * self.width:
                self._flush(index)

    def _flush(self, index: int) -> None:
        band = self.bands.pop(index)
        del self.filled[index]
        if index != getattr(self, "next_band", 0):
            raise ValueError(f"{self.path}: TIFF bands must complete in order (band {index} before earlier ones)")
        self.next_band = index + 1
        tiles = []
        for x in range(0, self.width, TIFF_TILE):
            tile = np.zeros((TIFF_TILE, TIFF_TILE, *band.shape[2:]), self.dtype)
            part = band[:, x : x + TIFF_TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            tiles.append(tile)
        self._put(tiles)

    def commit(self) -> None:
        if self.bands:
            raise ValueError(f"{self.path}: output incomplete, {len(self.bands)} row band(s) not fully written")
        self._put(None)
        self.thread.join()
        if self.error is not None:
            remove(self.temporary)
            raise OSError(getattr(self.error, "errno", None) or errno.EIO, f"TIFF writing failed ({self.error})", str(self.path)) from self.error
        move_into_place(self.temporary, self.path)

    def abort(self) -> None:
        self.bands.clear()
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("aborted")
            try:
                self.tiles.put_nowait(None)
            except queue.Full:
                pass
            self.thread.join(timeout=5)
        remove(self.temporary)


def open_sink(
    path: str | Path,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunk: tuple[int, int] = (TIFF_TILE, TIFF_TILE),
    attributes: dict | None = None,
) -> Sink:
    """A file sink for ``path`` chosen by its suffix (see the module docstring).

    ``shape`` is ``(H, W)`` for labels or ``(K, H, W)`` for probabilities; ``chunk`` the tile
    step (zarr chunking); ``attributes`` metadata stored in zarr outputs (classes, encoding).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ZARR_SUFFIX:
        return zarr_sink(path, shape, np.dtype(dtype), chunk, attributes or {})
    if suffix in TIFF_SUFFIXES:
        return TiffSink(path, shape, np.dtype(dtype))
    if suffix == NPY_SUFFIX:
        return npy_sink(path, shape, np.dtype(dtype))
    if suffix == PNG_SUFFIX:
        return PngSink(path, shape, np.dtype(dtype))
    raise OptionError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; use .png, .tif, .zarr or .npy")
