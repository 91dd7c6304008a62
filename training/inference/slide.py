"""A whole-slide image made ready for the predictor: resolution, tissue, background, statistics.

    job = prepare_slide("slide.svs", predictor.info, mpp=None, level=None, tissue="auto")
    predictor.predict_to(job.source, labels=..., stats=job.stats(predictor.info.normalization), skip=job.skip)

* the resolution: ``level`` or ``mpp`` as asked, else the bundle's ``data.mpp``, else level 0
  (:func:`training.io.slides.choose_resolution`);
* the source at that resolution, converted to gray (OpenCV's BT.601 luma) for a one-channel model;
* the tissue: ``"auto"`` detects it (:func:`training.inference.tissue.detect_tissue`), a path
  reads a user's mask, ``"none"`` computes every tile;
* ``skip``: a :class:`~training.inference.skipping.TileSkip` whose tiles without tissue get the
  background class;
* normalisation statistics of a per-image model come from the low-resolution image tissue is
  detected on, converted like the source: a slide's mean and standard deviation without reading
  every pixel of it twice (they are the same numbers whether tiles are skipped or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from training.errors import OptionError
from training.inference.skipping import TileSkip, background_index
from training.inference.tissue import TissueMask, detect_tissue, read_mask, thumbnail, write_mask_png
from training.io.slides import Resolution, Slide, VirtualLevel, choose_resolution, open_slide
from training.normalization import image_statistics

#: ``--tissue`` values that are not a mask file.
TISSUE_MODES = ("auto", "none")


class GraySlide:
    """An RGB slide source presented as one gray channel (``cv2.COLOR_RGB2GRAY``), window by window."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape = tuple(source.shape[:2])
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key) -> np.ndarray:
        return to_gray(np.asarray(self.source[key]))


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> ``(H, W)`` luma; an empty window stays empty."""
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def bundle_mpp(info) -> float | None:
    """The micrometres per pixel a bundle was trained at (``data.mpp`` of its training config), or None."""
    config = (info.provenance or {}).get("config") or {}
    value = (config.get("data") or {}).get("mpp")
    return float(value) if value else None


@dataclass(frozen=True)
class SlideSpec:
    """What another process needs to open the same source (picklable): the file, the stored level,
    the downscale factor ``(p, q)`` and whether it is read as gray."""

    path: str
    level: int
    factor: tuple[int, int]
    gray: bool

    def open(self):
        """The source this spec describes (the slide stays open as long as the source lives)."""
        slide = open_slide(self.path)
        stored = slide.level(self.level)
        factor = Fraction(*self.factor)
        source = stored if factor == 1 else VirtualLevel(stored, factor)
        return GraySlide(source) if self.gray else source


@dataclass
class SlideJob:
    """An open slide at the resolution to segment, with its tissue and what skipped tiles become."""

    slide: Slide
    resolution: Resolution
    source: object
    tissue: TissueMask | None
    thumbnail: np.ndarray
    skip: TileSkip | None
    extra: dict = field(default_factory=dict)

    def spec(self) -> SlideSpec:
        """The picklable description workers open the same source from."""
        factor = self.resolution.factor
        return SlideSpec(self.slide.info.path, self.resolution.level, (factor.numerator, factor.denominator),
                         isinstance(self.source, GraySlide))

    def stats(self, normalization) -> tuple[np.ndarray, np.ndarray]:
        """Normalisation statistics: fixed ones as they are, per-image ones from the thumbnail."""
        if normalization.mode == "fixed":
            return normalization.statistics(self.source)
        image = to_gray(self.thumbnail) if len(self.source.shape) == 2 else self.thumbnail
        return image_statistics(image)

    def attributes(self) -> dict:
        """What an output records: the slide, its format, the resolution and the tissue share."""
        info = self.slide.info
        return {"slide": {"path": info.path, "format": info.vendor, **self.resolution.to_dict(),
                          "tissue": None if self.tissue is None else {"source": self.tissue.source,
                                                                      "share": round(self.tissue.share, 6)}}}

    def write_mask(self, path: str | Path) -> Path | None:
        """The tissue mask beside an output (PNG over the thumbnail), when tissue is used."""
        if self.tissue is None:
            return None
        return write_mask_png(path, self.tissue, self.thumbnail if self.tissue.source == "auto" else None)

    def close(self) -> None:
        self.slide.close()


def find_tissue(slide: Slide, tissue: str) -> tuple[TissueMask | None, np.ndarray]:
    """The tissue mask asked for (``auto``, ``none`` or a mask file) and the slide's thumbnail."""
    if tissue == "auto":
        return detect_tissue(slide)
    image, _ = thumbnail(slide)
    if tissue == "none":
        return None, image
    level0 = (slide.info.levels[0].height, slide.info.levels[0].width)
    return read_mask(tissue, level0), image


def prepare_slide(path: str | Path, info, *, mpp: float | None = None, level: int | None = None,
                  tissue: str = "auto", background: str | int | None = None) -> SlideJob:
    """Open ``path`` and prepare it for a model with bundle info ``info`` (see the module docstring)."""
    slide = open_slide(path)
    try:
        resolution = choose_resolution(slide.info, mpp=mpp, level=level, model_mpp=bundle_mpp(info))
        source = slide.source(resolution)
        if info.in_channels == 1:
            source = GraySlide(source)
        elif info.in_channels != 3:
            raise OptionError(f"the model takes {info.in_channels} channels; a slide has 3 (RGB)")
        skipped_class = background_index(list(info.classes), background) if tissue != "none" else None
        mask, image = find_tissue(slide, tissue)
        skip = None if mask is None else TileSkip(mask.selector(resolution.to_level0), skipped_class)
        return SlideJob(slide, resolution, source, mask, image, skip)
    except BaseException:
        slide.close()
        raise
