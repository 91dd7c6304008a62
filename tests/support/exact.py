"""The tiled == whole-image comparison the inference tests make."""

from __future__ import annotations

import numpy as np

#: Probability margin between the two likeliest classes below which float32 round-off (the
#: tiled and whole passes run convolutions of different sizes: ~1e-7) may decide the label.
FLOAT_TIE = 1e-6


def assert_exact(tiled, whole) -> None:
    """max |p diff| <= 1e-5 and identical labels, except at float32 ties (two classes within
    :data:`FLOAT_TIE`), of which at most one pixel per image may differ."""
    assert tiled.labels.dtype == np.uint8 and tiled.labels.shape == whole.labels.shape
    assert np.abs(tiled.probabilities - whole.probabilities).max() <= 1e-5
    differ = tiled.labels != whole.labels
    if differ.any():
        top = np.sort(whole.probabilities, axis=0)
        margin = top[-1] - (top[-2] if top.shape[0] > 1 else 1 - top[-1])
        assert differ.sum() <= 1 and (np.abs(margin[differ]) <= FLOAT_TIE).all()
