"""Whole-slide images: pyramids read lazily, at the resolution a model was trained at.

Two readers, chosen per file by what each reads (measured in ``docs/slides.md``):

* **OpenSlide** (``openslide-python`` with the library from ``openslide-bin``) for the vendor
  formats: Aperio SVS, Hamamatsu NDPI/VMS, Leica SCN, MIRAX MRXS, Ventana BIF, Philips TIFF,
  Sakura SVSLIDE, DICOM. It is the only maintained reader of MRXS and VMS (not TIFF files) and
  parses each vendor's metadata (mpp, objective power). Its RGBA output is composited over white,
  as slide viewers show it; its tile cache is bounded (:data:`OPENSLIDE_CACHE_BYTES`).
* **tifffile** (already Tessera's TIFF reader) for generic pyramidal TIFF and OME-TIFF, which
  OpenSlide reads at level 0 only (OME-TIFF keeps its pyramid in SubIFDs) and without their
  physical pixel size. Reads go through tifffile's zarr store, tile by tile, with no cache.

A :class:`Slide` lists its levels (``(height, width)``, downsample to level 0, mpp); a level is
presented as a *source* (``shape (H, W, 3)``, uint8, numpy slicing of the first two axes), the
interface of :mod:`training.io.readers`, so the tiler reads it window by window.

**Resolution.** :func:`choose_resolution` picks what to segment at: ``level=N``; or a target mpp
(the user's, else the bundle's ``data.mpp``), served by the level within 10% of it, else by a
:class:`VirtualLevel`: the next finer level downscaled by a rational factor ``p/q`` with exact
area interpolation (integer sums of the q-times upsampled pixels over p x p blocks, rounded half
up). A window is read from a block aligned to multiples of ``q`` output pixels, so every output
pixel sees the same source pixels with the same weights whether it is read alone or inside a
larger window: tiles of a virtual level equal the same part of the whole downscaled level.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Self

import numpy as np
import tifffile

from training.errors import TesseraError
from training.io.images import TIFF_MAGIC, ImageError

#: File suffixes that name whole-slide images (TIFF suffixes are slides when they hold a pyramid).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
#: OpenSlide's tile cache, bytes (OpenSlide's default is 32 MiB; a tile batch reads ~10 MiB).
OPENSLIDE_CACHE_BYTES = 64 << 20
#: A level serves a target mpp when its own mpp is within this relative distance.
MPP_TOLERANCE = 0.10
#: Largest denominator of a virtual level's downscale factor (bounds the upsampled block).
MAX_DENOMINATOR = 8
#: Micrometres per unit of an OME ``PhysicalSizeXUnit``.
UNIT_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class ResolutionError(TesseraError):
    """A resolution that a slide cannot serve (no such level, mpp finer than level 0 ...)."""


def window_bounds(key, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of a ``[rows, cols]`` slice key on an image of ``shape`` (the rows
    alone: every column); an empty window has ``y1 <= y0`` or ``x1 <= x0``."""
    rows, cols = key[:2] if isinstance(key, tuple) else (key, slice(None))
    y0, y1, _ = rows.indices(shape[0])
    x0, x1, _ = cols.indices(shape[1])
    return y0, y1, x0, x1


@dataclass(frozen=True)
class SlideLevel:
    """One stored level: its size in pixels and its downsample relative to level 0."""

    height: int
    width: int
    downsample: float


@dataclass
class SlideInfo:
    """What ``tessera info SLIDE`` prints: format, reader, levels, mpp and objective power."""

    path: str
    vendor: str
    reader: str
    levels: list[SlideLevel]
    mpp: tuple[float, float] | None
    objective_power: float | None
    properties: dict = field(default_factory=dict)

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (x axis), from level 0's and the downsample."""
        return None if self.mpp is None else self.mpp[0] * self.levels[level].downsample

    def to_dict(self) -> dict:
        """A JSON-ready description (level sizes as width x height, as slide tools print them)."""
        levels = [
            {"level": i, "width": lv.width, "height": lv.height, "downsample": round(lv.downsample, 6),
             "mpp": None if self.mpp is None else round(self.level_mpp(i), 6)}
            for i, lv in enumerate(self.levels)
        ]
        return {"path": self.path, "format": self.vendor, "reader": self.reader, "levels": levels,
                "mpp": None if self.mpp is None else {"x": self.mpp[0], "y": self.mpp[1]},
                "objective_power": self.objective_power}


def over_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (straight alpha) composited over white as uint8 RGB, rounded to nearest."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


class OpenSlideReader:
    """A vendor slide through OpenSlide; ``read`` takes level coordinates and returns RGB."""

    name = "openslide"

    def __init__(self, path: Path, cache_bytes: int = OPENSLIDE_CACHE_BYTES) -> None:
        import openslide  # noqa: PLC0415  openslide loads for vendor slides only

        try:
            self.slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as error:
            raise ImageError(f"{path}: slide cannot be read ({error})", "corrupt") from None
        self.slide.set_cache(openslide.OpenSlideCache(cache_bytes))
        self.path = path

    def info(self) -> SlideInfo:
        """Levels, mpp and objective power from OpenSlide's standard properties."""
        props = self.slide.properties
        levels = [SlideLevel(h, w, float(d)) for (w, h), d in zip(self.slide.level_dimensions, self.slide.level_downsamples)]
        mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])) if "openslide.mpp-x" in props else None
        power = props.get("openslide.objective-power")
        return SlideInfo(str(self.path), props.get("openslide.vendor", "unknown"), self.name, levels, mpp,
                         float(power) if power else None)

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Level ``level`` rows ``y0..y1-1``, columns ``x0..x1-1`` as uint8 RGB (over white)."""
        import openslide  # noqa: PLC0415  openslide loads for vendor slides only

        downsample = self.slide.level_downsamples[level]
        origin = (round(x0 * downsample), round(y0 * downsample))
        try:
            region = self.slide.read_region(origin, level, (x1 - x0, y1 - y0))
        except openslide.OpenSlideError as error:
            raise ImageError(f"{self.path}: slide cannot be decoded ({error})", "corrupt") from None
        return over_white(np.asarray(region))

    def close(self) -> None:
        """Release the file and OpenSlide's cache."""
        self.slide.close()


def ome_mpp(tiff) -> tuple[float, float] | None:
    """Level-0 microns per pixel from OME-XML ``PhysicalSizeX/Y`` (units converted), or None."""
    if not tiff.is_ome:
        return None
    root = ET.fromstring(tiff.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = float(pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"]))
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
        sizes.append(value * UNIT_MICRONS.get(unit, 1.0))
    return sizes[0], sizes[1]


def resolution_mpp(page) -> tuple[float, float] | None:
    """Microns per pixel from TIFF XResolution/YResolution in centimetres or inches, or None."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit else 0)
    if per_unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if not xn or not yn:
        return None
    return per_unit * xd / xn, per_unit * yd / yn


class TiffSlideReader:
    """A generic pyramidal TIFF or OME-TIFF through tifffile: one lazy zarr array per level."""

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        import zarr  # noqa: PLC0415  zarr loads for slides only, not with every image read

        try:
            self.tiff = tifffile.TiffFile(path)
            series = self.tiff.series[0]
            self.arrays = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        except Exception as error:  # noqa: BLE001 (tifffile raises many types for broken files)
            raise ImageError(f"{path}: slide cannot be read ({error})", "corrupt") from None
        self.axes = series.axes
        if self.axes not in ("YXS", "YX"):
            raise ImageError(f"{path}: slide pyramid has axes {self.axes}; one RGB or gray image expected", "shape")
        self.path = path

    def info(self) -> SlideInfo:
        """Levels from the pyramid; mpp from OME physical sizes, else the TIFF resolution tags."""
        height, width = self.arrays[0].shape[:2]
        levels = [SlideLevel(a.shape[0], a.shape[1], (height / a.shape[0] + width / a.shape[1]) / 2) for a in self.arrays]
        mpp = ome_mpp(self.tiff) or resolution_mpp(self.tiff.pages[0])
        vendor = "ome-tiff" if self.tiff.is_ome else "generic-tiff"
        return SlideInfo(str(self.path), vendor, self.name, levels, mpp, None)

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Level ``level`` rows ``y0..y1-1``, columns ``x0..x1-1`` as uint8 RGB."""
        try:
            block = np.asarray(self.arrays[level][y0:y1, x0:x1])
        except Exception as error:  # noqa: BLE001 (zarr and the codecs raise many types)
            raise ImageError(f"{self.path}: slide cannot be decoded ({error})", "corrupt") from None
        if block.ndim == 2:
            return np.repeat(block[..., None], 3, axis=-1)
        return over_white(block) if block.shape[2] == 4 else block[..., :3]

    def close(self) -> None:
        """Close the TIFF file."""
        self.tiff.close()


class LevelSource:
    """One stored level of a slide as a tiler source: ``shape (H, W, 3)``, uint8, sliced lazily."""

    def __init__(self, reader, level: int, size: tuple[int, int]) -> None:
        self.reader = reader
        self.level = level
        self.shape = (int(size[0]), int(size[1]), 3)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key) -> np.ndarray:
        y0, y1, x0, x1 = window_bounds(key, self.shape)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        return self.reader.read(self.level, y0, y1, x0, x1)


def area_downscale(block: np.ndarray, factor: Fraction, out_h: int, out_w: int) -> np.ndarray:
    """Exact area downscale of ``block`` (H, W, C uint8) by ``factor = p/q`` to ``(out_h, out_w)``.

    Output pixel ``(i, j)`` is the mean of the source area ``[i p/q, (i+1) p/q) x [j p/q, (j+1) p/q)``:
    every source pixel is repeated ``q`` times per axis and ``p x p`` blocks are summed (integers),
    then divided by ``p**2`` with rounding half up. The block must hold ``ceil(out * p / q)`` pixels.
    """
    p, q = factor.numerator, factor.denominator
    sums = np.repeat(block, q, axis=0)[: out_h * p].astype(np.uint32)
    sums = sums.reshape(out_h, p, *sums.shape[1:]).sum(axis=1)
    sums = np.repeat(sums, q, axis=1)[:, : out_w * p]
    sums = sums.reshape(out_h, out_w, p, *sums.shape[2:]).sum(axis=2)
    return ((sums + p * p // 2) // (p * p)).astype(np.uint8)


class VirtualLevel:
    """A level that the slide does not store: a finer source downscaled by ``factor`` (> 1).

    Reads are aligned to multiples of ``q`` output pixels (``q`` = the factor's denominator), where
    the source position ``k q * p/q = k p`` is an integer, so each output pixel's weights never depend
    on the window it is read in (see :func:`area_downscale`).
    """

    def __init__(self, finer, factor: Fraction) -> None:
        if factor <= 1:
            raise ValueError(f"a virtual level downscales; factor {factor} is not above 1")
        self.finer = finer
        self.factor = factor
        height, width = finer.shape[:2]
        self.shape = (height * factor.denominator // factor.numerator, width * factor.denominator // factor.numerator, 3)
        self.dtype = np.dtype(np.uint8)

    def _span(self, start: int, stop: int, axis: int) -> tuple[int, int, int, int]:
        """Aligned output span ``[a, b)`` holding ``[start, stop)`` on ``axis``, and its source span."""
        p, q = self.factor.numerator, self.factor.denominator
        a = start // q * q
        b = min(-(-stop // q) * q, self.shape[axis])
        return a, b, a * p // q, min(-(-(b * p) // q), self.finer.shape[axis])

    def __getitem__(self, key) -> np.ndarray:
        y0, y1, x0, x1 = window_bounds(key, self.shape)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        ya, yb, sy0, sy1 = self._span(y0, y1, 0)
        xa, xb, sx0, sx1 = self._span(x0, x1, 1)
        block = np.asarray(self.finer[sy0:sy1, sx0:sx1])
        out = area_downscale(block, self.factor, yb - ya, xb - xa)
        return out[y0 - ya : y1 - ya, x0 - xa : x1 - xa]


@dataclass(frozen=True)
class Resolution:
    """What a slide is segmented at: a stored ``level``, downscaled by ``factor`` (1 = as stored).

    ``mpp`` is the resulting microns per pixel (None when the slide has none); ``to_level0`` the
    factor from these pixels to level-0 pixels (multiply coordinates by it).
    """

    level: int
    factor: Fraction
    mpp: float | None
    to_level0: float

    def to_dict(self) -> dict:
        """JSON-ready: level, downscale factor, mpp and the factor to level 0."""
        return {"level": self.level, "downscale": str(self.factor), "mpp": self.mpp,
                "to_level0": round(self.to_level0, 9)}


def check_level(info: SlideInfo, level: int) -> None:
    """Refuse a level the slide does not have, naming those it has."""
    if not 0 <= level < len(info.levels):
        raise ResolutionError(f"{info.path}: level {level} does not exist (the slide has levels 0..{len(info.levels) - 1})")


def choose_resolution(info: SlideInfo, mpp: float | None = None, level: int | None = None,
                      model_mpp: float | None = None) -> Resolution:
    """The resolution to segment at: ``level``, else ``mpp``, else the model's mpp, else level 0.

    A target mpp is served by the stored level within :data:`MPP_TOLERANCE` of it, else by the next
    finer level downscaled by ``target / level mpp`` (a fraction with denominator <= 8).
    """
    if level is not None and mpp is not None:
        raise ResolutionError("give either a level or an mpp, not both")
    if level is not None:
        check_level(info, level)
        return Resolution(level, Fraction(1), info.level_mpp(level), info.levels[level].downsample)
    target = mpp if mpp is not None else model_mpp
    if target is None:
        return Resolution(0, Fraction(1), info.level_mpp(0), 1.0)
    if target <= 0 or not math.isfinite(target):
        raise ResolutionError(f"mpp must be a positive number, not {target}")
    if info.mpp is None:
        raise ResolutionError(f"{info.path}: the slide records no microns per pixel; choose a level instead of mpp {target}")
    return resolution_for_mpp(info, float(target))


def resolution_for_mpp(info: SlideInfo, target: float) -> Resolution:
    """The stored level within tolerance of ``target`` mpp, or a virtual level from the next finer one."""
    mpps = [info.level_mpp(i) for i in range(len(info.levels))]
    if target < mpps[0] * (1 - MPP_TOLERANCE):
        raise ResolutionError(f"{info.path}: mpp {target} is finer than level 0 ({mpps[0]:g} µm per pixel); "
                              "the slide cannot be upsampled")
    close = [i for i, m in enumerate(mpps) if abs(m / target - 1) <= MPP_TOLERANCE]
    if close:
        best = min(close, key=lambda i: abs(mpps[i] / target - 1))
        return Resolution(best, Fraction(1), mpps[best], info.levels[best].downsample)
    finer = max(i for i, m in enumerate(mpps) if m < target)
    factor = Fraction(target / mpps[finer]).limit_denominator(MAX_DENOMINATOR)
    return Resolution(finer, factor, mpps[finer] * float(factor), info.levels[finer].downsample * float(factor))


class Slide:
    """An open whole-slide image: its :class:`SlideInfo` and its levels as lazy sources."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.info = reader.info()

    def level(self, level: int) -> LevelSource:
        """Stored level ``level`` as a source."""
        check_level(self.info, level)
        stored = self.info.levels[level]
        return LevelSource(self.reader, level, (stored.height, stored.width))

    def source(self, resolution: Resolution):
        """The source at ``resolution``: a stored level, or a :class:`VirtualLevel` over it."""
        stored = self.level(resolution.level)
        return stored if resolution.factor == 1 else VirtualLevel(stored, resolution.factor)

    def close(self) -> None:
        """Release the reader."""
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_slide_path(path: str | Path) -> bool:
    """True for a file named like a vendor slide, or a TIFF holding a pyramid (more than one level)
    of 8-bit gray or RGB(A) pixels; other TIFFs (16-bit, multi-channel) are read as plain images."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff", ".btf", ".tf8") or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0] if tiff.series else None
            return (series is not None and len(series.levels) > 1 and series.dtype == np.uint8
                    and series.axes in ("YX", "YXS"))
    except Exception:  # noqa: BLE001 (any unreadable file is not a slide)
        return False


def open_slide(path: str | Path, cache_bytes: int = OPENSLIDE_CACHE_BYTES) -> Slide:
    """Open a slide with the reader that reads it (module docstring); errors are one-line ImageErrors."""
    import openslide  # noqa: PLC0415  openslide loads for slides only, not with every image read

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file", "corrupt")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file", "empty")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor not in (None, "generic-tiff"):
        return Slide(OpenSlideReader(path, cache_bytes))
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic in TIFF_MAGIC:
        return Slide(TiffSlideReader(path))
    if path.suffix.lower() == ".mrxs":
        raise ImageError(f"{path}: MIRAX slide cannot be read (its data folder {path.stem}/ must sit beside it)", "corrupt")
    raise ImageError(f"{path}: not a slide format OpenSlide or tifffile can read", "unsupported")
