"""Whole-slide inputs of a gigapixel job: the slide's source, its key, its tissue for every worker.

A slide (SVS, NDPI, MRXS, pyramidal TIFF ...) is read at the resolution and with the tissue
:func:`training.inference.slide.prepare_slide` chooses. Workers open the same source from its
:class:`~training.inference.slide.SlideSpec` and skip the same tiles: the tissue mask is saved in
the partial output (:data:`TISSUE_FILE`) and travels as its path. The resolution, the tissue
setting and the mask's digest are part of the job key, so another choice starts the job over.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from service.batch.gigapixel.plan import GigapixelJob
from training.errors import OptionError
from training.inference.skipping import TileSkip
from training.inference.slide import SlideJob, prepare_slide
from training.inference.tissue import TissueSelector
from training.io.slides import is_slide_path

#: The tissue mask inside the partial output.
TISSUE_FILE = ".tessera-tissue.npz"


def is_slide_source(src: str | Path) -> bool:
    """True for an existing whole-slide image (a vendor format, or a TIFF holding a pyramid)."""
    return Path(src).is_file() and is_slide_path(src)


def open_slide_job(src: Path, predictor, options: dict | None) -> SlideJob | None:
    """The slide prepared for the predictor (``options``: mpp, level, tissue, background), or None
    for an input that is not a slide."""
    if not is_slide_source(src):
        given = {k: v for k, v in (options or {}).items() if v is not None and (k, v) != ("tissue", "auto")}
        if given:
            raise OptionError(f"{src}: {', '.join(sorted(given))}: for whole-slide images only, and this is not one")
        return None
    return prepare_slide(src, predictor.info, **(options or {}))


def slide_key(job: SlideJob | None) -> dict:
    """The job-key fields of a slide: resolution, tissue source and the mask's digest."""
    if job is None:
        return {}
    tissue = None
    if job.tissue is not None:
        tissue = {"source": "auto" if job.tissue.source == "auto" else "mask",
                  "digest": hashlib.sha256(job.tissue.mask.tobytes()).hexdigest()[:16],
                  "background": job.skip.background}
    return {"slide": {**job.resolution.to_dict(), "gray": job.spec().gray, "tissue": tissue}}


def with_slide(job: GigapixelJob, slide: SlideJob | None) -> GigapixelJob:
    """``job`` with the slide's spec and, when tissue is used, a skip reading the mask saved in the partial output."""
    if slide is None:
        return job
    skip = None
    if slide.tissue is not None:
        path = slide.tissue.save(Path(job.partial) / TISSUE_FILE)
        skip = TileSkip(TissueSelector(str(path), slide.resolution.to_level0), slide.skip.background)
    return dataclasses.replace(job, slide=slide.spec(), skip=skip)


def skipped_tiles(slide: SlideJob | None, grid) -> list:
    """The tiles of ``grid`` the job skips (none without a slide's tissue)."""
    if slide is None or slide.skip is None:
        return []
    return slide.skip.split(grid.tiles())[1]
