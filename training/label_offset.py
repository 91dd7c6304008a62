"""Labels drawn off-centre (``data.label_offset``): how the offset turns under flips and quarter
turns, for training's augmentation and for test-time augmentation alike.

Some masks sit a fraction of a pixel off the structures they trace (ISBI 2012: 0.6 px above and
0.2 px left of the membranes, docs/training-notes.md "Session 5"). A model trained with that
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

Public API: :data:`MAX_LABEL_OFFSET`, :func:`check_label_offset`, :func:`bundle_label_offset`,
:func:`dihedral_vector`, :func:`view_correction`, :func:`correction_reach`, :func:`shift_maps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

#: Largest ``label_offset`` component accepted, pixels: labels further off are a registration problem.
MAX_LABEL_OFFSET = 4.0

Vector = tuple[float, float]


def check_label_offset(values: Sequence[float]) -> Vector:
    """``label_offset`` as ``(dy, dx)`` floats; ValueError naming the problem otherwise."""
    try:
        dy, dx = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"label_offset must be [dy, dx] in pixels, got {values!r}") from None
    if not (math.isfinite(dy) and math.isfinite(dx)) or max(abs(dy), abs(dx)) > MAX_LABEL_OFFSET:
        raise ValueError(f"label_offset {[dy, dx]}: each part must be within +-{MAX_LABEL_OFFSET} px")
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
