"""Mirror extrapolation: the ONE definition of the border Tessera uses everywhere.

The U-Net paper extrapolates missing context at image borders by mirroring. Tessera's mirror is
numpy's ``mode="reflect"`` (OpenCV ``BORDER_REFLECT_101``, albumentations' reflect borders): the
edge pixel is *not* repeated, ``[a b c d]`` continues as ``... c b | a b c d | c b a ...``. It is not
numpy's ``"symmetric"`` (``BORDER_REFLECT``), which is what dask's ``boundary="reflect"`` means.

Windows may reach arbitrarily far outside the image (a 1x1 image inside a 572 px tile): the
reflection then repeats with period ``2 * (n - 1)``, exactly as ``np.pad(..., mode="reflect")``.

Training patches, the tiler, whole-image inference and batch jobs all read their windows through
:func:`mirror_window`, so every path sees identical borders.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

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


def mirror_window(image: ArrayLike2D, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read ``image[y0:y1, x0:x1]`` where the window may extend past the borders, mirrored.

    Only the bounding box of the rows and columns actually needed is read from ``image``, so a
    lazy source (zarr, a TIFF page) is touched for at most the window's own area. Trailing axes
    (channels) are kept as they are.
    """
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
