"""Tissue masks: where a slide holds tissue, so tiles over empty glass need not be computed.

:func:`detect_tissue` works on a low-resolution image of the slide (a stored level of at most
:data:`THUMBNAIL_SIDE` pixels a side, else a coarser one area-downscaled band by band), in the
style of tiatoolbox's ``OtsuTissueMasker``: the optical density of each pixel's darkest channel
(glass is bright in every channel; stained tissue is dark in at least one) is thresholded with
Otsu's method (never below :data:`MIN_DENSITY`, so an empty slide stays empty), then cleaned up
morphologically: an opening removes dust, a closing bridges gaps between tissue fragments, and
objects and holes smaller than :data:`MIN_OBJECT_UM2` go (sizes in micrometres when the slide has
an mpp, else in thumbnail pixels).

:func:`read_mask` takes a user's mask (PNG, any resolution, non-zero = tissue) whose aspect ratio
must be the slide's. A :class:`TissueMask` answers "does this box hold tissue?" in constant time
(a summed-area table) for boxes in level-0 pixels, with one mask pixel of margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from training.io.images import ImageError, read_image
from training.io.slides import VirtualLevel

#: Longest side of the image tissue is detected on (pixels).
THUMBNAIL_SIDE = 2048
#: Optical density below which a pixel is glass whatever Otsu says (its darkest channel above 202 of 255).
MIN_DENSITY = 0.1
#: Radius of the opening and closing, micrometres (thumbnail pixels when the slide has no mpp: 1).
CLEANUP_RADIUS_UM = 16.0
#: Objects and holes smaller than this are dropped / filled, square micrometres (64 px without mpp).
MIN_OBJECT_UM2 = 10_000.0
#: Relative aspect-ratio difference a user mask may have from the slide's (rounding of its size).
ASPECT_TOLERANCE = 0.02


@dataclass
class TissueMask:
    """A boolean mask over the whole slide: ``mask[i, j]`` covers level-0 pixels scaled by ``size / mask.shape``."""

    mask: np.ndarray
    level0: tuple[int, int]
    threshold: float | None = None
    source: str = "auto"
    _table: np.ndarray | None = field(default=None, repr=False)

    @property
    def share(self) -> float:
        """Fraction of the slide's area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def table(self) -> np.ndarray:
        """Summed-area table with a zero first row and column (int64)."""
        if self._table is None:
            table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
            table[1:, 1:] = self.mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
            self._table = table
        return self._table

    def any_in(self, y0: float, y1: float, x0: float, x1: float) -> bool:
        """True when level-0 box ``[y0, y1) x [x0, x1)`` touches tissue (one mask pixel of margin)."""
        height, width = self.mask.shape
        sy, sx = height / self.level0[0], width / self.level0[1]
        r0 = max(math.floor(y0 * sy) - 1, 0)
        r1 = min(math.ceil(y1 * sy) + 1, height)
        c0 = max(math.floor(x0 * sx) - 1, 0)
        c1 = min(math.ceil(x1 * sx) + 1, width)
        if r1 <= r0 or c1 <= c0:
            return False
        t = self.table()
        return bool(t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0] > 0)

    def selector(self, to_level0: float) -> TissueSelector:
        """A function ``(y0, y1, x0, x1) -> bool`` for boxes in pixels ``to_level0`` times coarser than level 0."""
        return TissueSelector(self, to_level0)

    def save(self, path: str | Path) -> Path:
        """Save the mask (``.npz``: mask, level-0 size) for other processes (:func:`load_mask`)."""
        path = Path(path)
        with path.open("wb") as out:
            np.savez_compressed(out, mask=self.mask, level0=np.asarray(self.level0))
        return path


#: Masks loaded in this process, by file (workers of a batch job load each once).
_LOADED: dict[str, TissueMask] = {}


def load_mask(path: str | Path) -> TissueMask:
    """A mask saved by :meth:`TissueMask.save`, loaded once per process."""
    key = str(path)
    if key not in _LOADED:
        with np.load(key) as data:
            _LOADED.clear()
            _LOADED[key] = TissueMask(data["mask"], tuple(int(n) for n in data["level0"]), source=key)
    return _LOADED[key]


class TissueSelector:
    """``(y0, y1, x0, x1) -> bool``: does a box of a level ``to_level0`` times coarser than level 0 touch tissue?

    Picklable: a mask saved to a file travels as its path (loaded once per process).
    """

    def __init__(self, tissue: TissueMask | str, to_level0: float) -> None:
        self.tissue = tissue
        self.to_level0 = to_level0

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        mask = load_mask(self.tissue) if isinstance(self.tissue, str) else self.tissue
        f = self.to_level0
        return mask.any_in(y0 * f, y1 * f, x0 * f, x1 * f)


def thumbnail(slide, side: int = THUMBNAIL_SIDE) -> tuple[np.ndarray, int]:
    """A low-resolution RGB image of the slide and the level it came from.

    The finest stored level with both sides at most ``side``; when every level is larger, the
    coarsest one area-downscaled by the smallest integer factor that fits, read in bands of rows.
    """
    levels = slide.info.levels
    small = [i for i, lv in enumerate(levels) if max(lv.height, lv.width) <= side]
    if small:
        return np.asarray(slide.level(small[0])[:, :]), small[0]
    coarsest = len(levels) - 1
    stored = slide.level(coarsest)
    factor = math.ceil(max(stored.shape[:2]) / side)
    virtual = VirtualLevel(stored, Fraction(factor))
    bands = [virtual[y : y + 256, :] for y in range(0, virtual.shape[0], 256)]
    return np.concatenate(bands, axis=0), coarsest


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log10((v + 1) / 256)`` of each pixel's darkest channel (float32)."""
    darkest = rgb.min(axis=2) if rgb.ndim == 3 else rgb
    lookup = -np.log10((np.arange(256, dtype=np.float64) + 1) / 256).astype(np.float32)
    return lookup[darkest]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of optical densities (histogram of 256 bins), at least :data:`MIN_DENSITY`."""
    if values.size == 0 or float(values.max()) <= MIN_DENSITY:
        return float("inf")
    from skimage.filters import threshold_otsu  # noqa: PLC0415  skimage (~0.6 s) loads for tissue detection only, not with every predict

    return max(float(threshold_otsu(values, nbins=256)), MIN_DENSITY)


def clean_up(mask: np.ndarray, mpp: float | None) -> np.ndarray:
    """Opening, closing, then objects and holes below :data:`MIN_OBJECT_UM2` removed (sizes from ``mpp``)."""
    from skimage.morphology import remove_small_holes, remove_small_objects  # noqa: PLC0415  skimage (~0.6 s) loads for tissue detection only, not with every predict

    radius = max(1, round(CLEANUP_RADIUS_UM / mpp)) if mpp else 1
    min_size = max(1, round(MIN_OBJECT_UM2 / mpp**2)) if mpp else 64
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    image = mask.astype(np.uint8)
    image = cv2.morphologyEx(image, cv2.MORPH_OPEN, kernel)
    image = cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    cleaned = remove_small_objects(image.astype(bool), max_size=min_size - 1)
    return remove_small_holes(cleaned, max_size=min_size - 1)


def tissue_from_rgb(rgb: np.ndarray, mpp: float | None, level0: tuple[int, int]) -> TissueMask:
    """Detect tissue on a low-resolution RGB image whose pixels are ``mpp`` micrometres wide."""
    density = optical_density(rgb)
    threshold = otsu_threshold(density)
    mask = clean_up(density > threshold, mpp) if math.isfinite(threshold) else np.zeros(density.shape, bool)
    return TissueMask(mask, level0, threshold if math.isfinite(threshold) else None, "auto")


def detect_tissue(slide) -> tuple[TissueMask, np.ndarray]:
    """The tissue of an open :class:`~training.io.slides.Slide` and the thumbnail it was found on."""
    image, _ = thumbnail(slide)
    info = slide.info
    level0 = (info.levels[0].height, info.levels[0].width)
    mpp = None if info.mpp is None else info.mpp[0] * level0[1] / image.shape[1]
    return tissue_from_rgb(image, mpp, level0), image


def read_mask(path: str | Path, level0: tuple[int, int]) -> TissueMask:
    """A user's tissue mask (PNG or any image; non-zero = tissue) for a slide of level-0 size ``level0``."""
    path = Path(path)
    pixels = read_image(path)
    mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels > 0
    height, width = mask.shape
    expected = width * level0[0] / level0[1]
    if abs(height - expected) > max(1.0, ASPECT_TOLERANCE * expected):
        raise ImageError(
            f"{path}: tissue mask is {width}x{height} (aspect {width / height:.3f}), the slide is "
            f"{level0[1]}x{level0[0]} (aspect {level0[1] / level0[0]:.3f}); the mask must cover the whole slide",
            "shape",
        )
    return TissueMask(mask, level0, None, str(path))


def write_mask_png(path: str | Path, tissue: TissueMask, thumbnail_rgb: np.ndarray | None = None) -> Path:
    """Write the mask beside an output as a PNG: the thumbnail with glass dimmed, or the mask in black and white."""
    path = Path(path)
    if thumbnail_rgb is not None and thumbnail_rgb.shape[:2] == tissue.mask.shape:
        image = thumbnail_rgb.copy()
        image[~tissue.mask] = (image[~tissue.mask] // 3 + 170).astype(np.uint8)
        contours, _ = cv2.findContours(tissue.mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        image = cv2.drawContours(np.ascontiguousarray(image), contours, -1, (0, 160, 0), 1)
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    else:
        pixels = tissue.mask.astype(np.uint8) * 255
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"{path}: cannot write the tissue mask")
    return path
