"""Mirror extrapolation: the ONE definition of the border Tessera uses everywhere.

The U-Net paper extrapolates missing context at image borders by mirroring. Tessera's mirror is
numpy's ``mode="reflect"`` (OpenCV ``BORDER_REFLECT_101``, albumentations' reflect borders): the
edge pixel is *not* repeated, ``[a b c d]`` continues as ``... c b | a b c d | c b a ...``. It is not
numpy's ``"symmetric"`` (``BORDER_REFLECT``), which is what dask's ``boundary="reflect"`` means.

Windows may reach arbitrarily far outside the image (a 1x1 image inside a 572 px tile): the
reflection then repeats with period ``2 * (n - 1)``, exactly as ``np.pad(..., mode="reflect")``.

Training patches, the tiler, whole-image inference and batch jobs all read their windows through
:func:`mirror_window`, so every path sees identical borders. A :class:`PaddedImage` (a block of an
image padded beforehand with this mirror, e.g. a ``dask.array.map_overlap`` block in a gigapixel
job) is read by slicing: its border is the one it carries, which is why that padding must be this
mirror and not dask's ``boundary="reflect"``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from training.errors import OptionError

#: The numpy name of our mirror mode; OpenCV / albumentations call it BORDER_REFLECT_101.
NUMPY_MODE = "reflect"


class ArrayLike2D(Protocol):
    """Anything indexable like ``array[y0:y1, x0:x1, ...]`` with a ``shape`` (numpy, zarr, dask)."""

    shape: tuple[int, ...]

    def __getitem__(self, key): ...


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Source indices for positions ``start..stop-1`` of an axis of length ``size``, mirrored.

    Positions outside ``[0, size)`` are reflected without repeating the edge (numpy 'reflect').
    """
    if size < 1:
        raise ValueError("cannot mirror an empty axis")
    positions = np.arange(start, stop, dtype=np.int64)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


class PaddedImage:
    """An image known through one block that already holds its mirrored border.

    ``block[i, j]`` is the image's pixel ``(origin[0] + i, origin[1] + j)``, where positions outside
    the image hold what :func:`mirror_indices` maps them to (the block was cut from an image padded
    with this mirror). ``shape`` is the whole image's, so a tile grid planned on it is the whole
    image's grid. Windows are plain slices of the block; one reaching past it is an error, never
    silently re-mirrored.
    """

    def __init__(self, block: np.ndarray, origin: tuple[int, int], shape: tuple[int, ...]) -> None:
        self.block = block
        self.origin = (int(origin[0]), int(origin[1]))
        self.shape = tuple(int(n) for n in shape)
        self.dtype = block.dtype

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Image rows ``y0..y1-1`` and columns ``x0..x1-1`` (border included), a view of the block."""
        r0, c0 = y0 - self.origin[0], x0 - self.origin[1]
        r1, c1 = r0 + y1 - y0, c0 + x1 - x0
        if r0 < 0 or c0 < 0 or r1 > self.block.shape[0] or c1 > self.block.shape[1]:
            raise OptionError(
                f"window rows {y0}..{y1}, columns {x0}..{x1} is not inside the padded block "
                f"(rows {self.origin[0]}..{self.origin[0] + self.block.shape[0]}, "
                f"columns {self.origin[1]}..{self.origin[1] + self.block.shape[1]})"
            )
        return self.block[r0:r1, c0:c1]

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key[:2] if isinstance(key, tuple) else (key, slice(None))
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        return self.window(y0, y1, x0, x1)


def mirror_window(image: ArrayLike2D, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read ``image[y0:y1, x0:x1]`` where the window may extend past the borders, mirrored.

    Only the bounding box of the rows and columns actually needed is read from ``image``, so a
    lazy source (zarr, a TIFF page) is touched for at most the window's own area. Trailing axes
    (channels) are kept as they are. A :class:`PaddedImage` is sliced: it carries its border.
    """
    if isinstance(image, PaddedImage):
        return image.window(y0, y1, x0, x1)
    height, width = image.shape[:2]
    rows = mirror_indices(y0, y1, height)
    cols = mirror_indices(x0, x1, width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    block = np.asarray(image[r0:r1, c0:c1])
    if (r1 - r0, c1 - c0) == (y1 - y0, x1 - x0) and r0 == y0 and c0 == x0:
        return block
    return block.take(rows - r0, axis=0).take(cols - c0, axis=1)


def mirror_pad(image: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """Pad the first two axes of an in-memory array with our mirror (``before``/``after`` = (y, x))."""
    height, width = image.shape[:2]
    return mirror_window(image, -before[0], height + after[0], -before[1], width + after[1])
