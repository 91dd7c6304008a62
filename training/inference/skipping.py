"""Tiles that need no model: their output is known (empty glass of a slide is the background class).

A :class:`TileSkip` tells the predictor, tile by tile, whether to run the model: ``computes(box)``
is asked with the tile's *output* box (what the tile writes), so a tile whose output touches
tissue is computed exactly as in a run without skipping, from the same input window; the others
write :meth:`TileSkip.block`: the background class, with probability 1 for it and 0 for every
other class (a one-class model: 0, or 1 when its one class is the background).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from training.errors import OptionError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class TileSkip:
    """Which tiles to compute (``computes(y0, y1, x0, x1)`` on output boxes) and the class skipped tiles get."""

    computes: Callable[[int, int, int, int], bool]
    background: int

    def split(self, tiles: Iterable) -> tuple[list, list]:
        """``(computed, skipped)`` tiles, each list in grid order."""
        computed, skipped = [], []
        for tile in tiles:
            (computed if self.computes(*tile.output) else skipped).append(tile)
        return computed, skipped

    def block(self, classes: int, height: int, width: int) -> np.ndarray:
        """Probabilities ``(K, height, width)`` float32 of a skipped tile: certain background."""
        if classes == 1:
            return np.full((1, height, width), float(self.background == 1), np.float32)
        out = np.zeros((classes, height, width), np.float32)
        out[self.background] = 1.0
        return out


def background_index(classes: list[str], choice: str | int | None) -> int:
    """The background class: ``choice`` (a class name or index), else the class named ``background``.

    A model without such a class needs the choice; its absence is a one-line error naming the classes.
    """
    if choice is None:
        if "background" in classes:
            return classes.index("background")
        raise OptionError(f"--background-class is required to skip empty tiles: the model's classes are "
                         f"{', '.join(classes)} (none is named 'background'); or use --tissue none")
    if isinstance(choice, str) and choice in classes:
        return classes.index(choice)
    try:
        index = int(choice)
    except ValueError:
        raise OptionError(f"background class {choice!r} is not one of the model's classes ({', '.join(classes)})") from None
    limit = max(len(classes), 2)
    if not 0 <= index < limit:
        raise OptionError(f"background class {index} is out of range (the model has classes 0..{limit - 1})")
    return index
