"""Labels drawn off-centre (``data.label_offset``): how the offset turns under flips and quarter
turns, for training's augmentation and for test-time augmentation alike.

Some masks sit a fraction of a pixel off the structures they trace (ISBI 2012: 0.6 px above and
0.2 px left of the membranes, docs/training.md "Label offset"). A model trained with that
offset kept (:class:`training.data.augment.OffsetDihedral`) predicts labels the same ``(dy, dx)``
off what it sees. Conventions: offsets and shifts are ``(dy, dx)`` pixels, negative is up / left;
a view is a horizontal flip (``hflip``), a vertical flip (``vflip``), then ``turns``
counter-clockwise quarter turns (``np.rot90`` / ``torch.rot90`` on the last two axes), in that
order.

Test-time augmentation: on the view ``V(image)`` the model draws labels ``offset`` off the viewed
structures; un-viewed, they lie ``V^-1(offset)`` off the real ones. :func:`view_correction` is
the move ``offset - V^-1(offset)`` that puts them back where the labels are, and
:func:`shift_maps` makes that (sub-pixel, bilinear) move on probability maps. A move of ``s``
pixels reads ``ceil(|s|)`` pixels of neighbours (:func:`correction_reach`); the predictor grows
its tiles' context by that much, so tiled results stay equal to a whole-image pass.

Measuring the offset (:func:`measure_label_offset`, ``tessera label-offset``): the
cross-correlation of the image's intensity with a class's mask, over moves of up to
:data:`MAX_LABEL_OFFSET` pixels, peaks where the mask best overlays what it traces; a parabola
through the peak and its neighbours gives the sub-pixel position. On ISBI 2012 slices 0-24 it
finds the labels 0.6 px above and 0.1-0.2 px left of the membranes.

Public API: :data:`MAX_LABEL_OFFSET`, :func:`check_label_offset`, :func:`bundle_label_offset`,
:func:`dihedral_vector`, :func:`view_correction`, :func:`correction_reach`, :func:`shift_maps`,
:func:`offset_correlation`, :func:`correlation_peak`, :func:`measure_label_offset`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from training.data.dataset import DatasetError
from training.errors import OptionError

#: Largest ``label_offset`` component accepted, pixels: labels further off are a registration problem.
MAX_LABEL_OFFSET = 4.0

Vector = tuple[float, float]


def check_label_offset(values: Sequence[float]) -> Vector:
    """``label_offset`` as ``(dy, dx)`` floats; ValueError naming the problem otherwise."""
    try:
        dy, dx = (float(v) for v in values)
    except (TypeError, ValueError):
        raise OptionError(f"label_offset must be [dy, dx] in pixels, got {values!r}") from None
    if not (math.isfinite(dy) and math.isfinite(dx)) or max(abs(dy), abs(dx)) > MAX_LABEL_OFFSET:
        raise OptionError(f"label_offset {[dy, dx]}: each part must be within +-{MAX_LABEL_OFFSET} px")
    return dy, dx


def bundle_label_offset(provenance: dict[str, Any] | None) -> Vector:
    """The ``data.label_offset`` a bundle was trained with (its provenance), ``(0, 0)`` if none."""
    config = (provenance or {}).get("config") or {}
    return check_label_offset((config.get("data") or {}).get("label_offset") or (0.0, 0.0))


def dihedral_vector(vector: Vector, hflip: bool, vflip: bool, turns: int) -> Vector:
    """Where a displacement ``(dy, dx)`` points after the view ``(hflip, vflip, turns)``."""
    dy, dx = vector
    if hflip:
        dx = -dx
    if vflip:
        dy = -dy
    for _ in range(turns % 4):
        dy, dx = -dx, dy
    return dy, dx


def view_correction(offset: Vector, turns: int, hflip: bool) -> Vector:
    """The move ``offset - V^-1(offset)`` that puts labels predicted on the view ``V`` (a
    horizontal flip, then ``turns`` quarter turns) and un-viewed back ``offset`` off the structures."""
    dy, dx = dihedral_vector(offset, False, False, -turns)
    back = dihedral_vector((dy, dx), hflip, False, 0)
    return offset[0] - back[0], offset[1] - back[1]


def correction_reach(shifts: Sequence[Vector]) -> int:
    """Pixels of neighbours the moves ``shifts`` read per side (0 for no move)."""
    return max((math.ceil(abs(v)) for shift in shifts for v in shift), default=0)


def shift_maps(maps: torch.Tensor, shift: Vector) -> torch.Tensor:
    """``maps`` ``(..., H, W)`` moved by ``shift = (dy, dx)`` pixels, bilinear:
    ``out[y, x] = maps[y - dy, x - dx]``. The outer ``ceil(|dy|)`` rows and ``ceil(|dx|)``
    columns wrap around and are meaningless; callers crop them."""
    for axis, amount in ((-2, shift[0]), (-1, shift[1])):
        whole = math.floor(amount)
        part = amount - whole
        moved = torch.roll(maps, whole, dims=axis)
        if part:
            moved = (1.0 - part) * moved + part * torch.roll(maps, whole + 1, dims=axis)
        maps = moved
    return maps


def offset_correlation(image: np.ndarray, mask: np.ndarray, reach: int = int(MAX_LABEL_OFFSET)) -> np.ndarray:
    """``(2 reach + 1, 2 reach + 1)`` correlations of ``image`` (``(H, W)`` or ``(H, W, C)``,
    channels averaged, standardised) moved by ``(dy, dx)`` with ``mask`` (bool ``(H, W)``,
    centred), entry ``[reach + dy, reach + dx]``, over the pixels ``reach`` away from the border.
    The mask of structures drawn ``offset`` off correlates most (in absolute value) at ``offset``."""
    pixels = np.asarray(image, np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    if pixels.shape != mask.shape:
        raise DatasetError(f"image {pixels.shape} and mask {mask.shape} differ in size")
    if min(pixels.shape) <= 4 * reach:
        raise DatasetError(f"image {pixels.shape} is too small to measure moves of {reach} px")
    pixels = (pixels - pixels.mean()) / (pixels.std() or 1.0)
    centred = mask.astype(np.float64) - mask.mean()
    inner = (slice(reach, -reach), slice(reach, -reach))
    size = 2 * reach + 1
    table = np.empty((size, size))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = np.roll(pixels, (dy, dx), axis=(0, 1))
            table[reach + dy, reach + dx] = np.mean(moved[inner] * centred[inner])
    return table


def _parabola_peak(left: float, centre: float, right: float) -> float:
    """Sub-pixel position (-0.5..0.5) of the extremum of the parabola through three samples."""
    curve = left - 2 * centre + right
    return 0.0 if curve == 0 else float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))


def correlation_peak(table: np.ndarray) -> Vector:
    """The sub-pixel ``(dy, dx)`` of the strongest correlation in a table from
    :func:`offset_correlation` (or a sum of them): the sign of the unmoved entry says whether
    the class is darker or brighter than the rest; a parabola along each axis refines the peak.
    ValueError when the peak lies at the edge of the table (beyond the moves searched)."""
    reach = table.shape[0] // 2
    table = table * (np.sign(table[reach, reach]) or 1.0)
    y, x = np.unravel_index(int(np.argmax(table)), table.shape)
    if y in (0, table.shape[0] - 1) or x in (0, table.shape[1] - 1):
        raise DatasetError(f"the masks correlate best with the images moved {(int(y) - reach, int(x) - reach)} px, "
                         f"at the edge of the +-{reach} px searched: they do not seem to trace the images")
    dy = y - reach + _parabola_peak(table[y - 1, x], table[y, x], table[y + 1, x])
    dx = x - reach + _parabola_peak(table[y, x - 1], table[y, x], table[y, x + 1])
    return round(float(dy), 2), round(float(dx), 2)


def measure_label_offset(pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                         reach: int = int(MAX_LABEL_OFFSET)) -> tuple[Vector, list[Vector]]:
    """Where the masks sit relative to what they trace, ``(dy, dx)`` pixels, from ``(image,
    mask)`` pairs (``mask``: bool, one class): the peak of the summed correlations
    (:func:`correlation_peak`), and each pair's own peak (None where it has none)."""
    if not pairs:
        raise DatasetError("no images to measure a label offset on")
    tables = [offset_correlation(image, mask, reach) for image, mask in pairs]
    each = []
    for table in tables:
        try:
            each.append(correlation_peak(table))
        except ValueError:
            each.append(None)
    return correlation_peak(sum(tables)), each
