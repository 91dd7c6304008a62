"""Physical pixel sizes in OME-Zarr (OME-NGFF 0.5) multiscales metadata.

A label image made from a slide at ``mpp`` micrometres per pixel carries it on its space axes
(``"unit": "micrometer"``) and in each pyramid level's scale transform (``mpp * 2**level``), so
napari and QuPath overlay it on the slide at the right size. Without an mpp the axes have no unit
and the scales are the pyramid's factors alone.
"""

from __future__ import annotations

#: OME-NGFF unit name of micrometres.
MICROMETER = "micrometer"


def space_axes(mpp: float | None) -> list[dict]:
    """The ``y, x`` axes, in micrometres when ``mpp`` is known."""
    unit = {"unit": MICROMETER} if mpp else {}
    return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def level_datasets(levels: int, mpp: float | None, lead_axes: int = 0) -> list[dict]:
    """``datasets`` entries of ``levels`` pyramid levels halving each time (scale 1 on leading axes)."""
    size = mpp or 1.0
    return [
        {"path": str(level),
         "coordinateTransformations": [{"type": "scale", "scale": [*([1.0] * lead_axes), size * 2.0**level, size * 2.0**level]}]}
        for level in range(levels)
    ]


def resolution_attributes(mpp: float | None, to_level0: float, level: int = 0, downscale: str = "1") -> dict:
    """What an output records about the slide pixels it is at: mpp, slide level, downscale, factor to level 0."""
    return {"mpp": mpp, "slide_level": level, "downscale": downscale, "to_level0": to_level0}
