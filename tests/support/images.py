"""Images for tests: random pixels, smooth blobs that a random model splits into two classes,
and the shipped ISBI 2012 slices."""

from __future__ import annotations

import numpy as np

from tests.support.paths import ISBI
from training.io.images import read_image


def random_image(shape: tuple[int, ...], seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Uniform noise of ``shape``: integers over the dtype's whole range, or floats in [0, 1)."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 blobs (not noise), so the random model predicts both classes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 30)
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image += rng.normal(0, 0.05, image.shape)
    return np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)


def isbi_slice(index: int = 25, kind: str = "image") -> np.ndarray:
    """ISBI 2012 training slice ``index`` (0..29), 512x512 uint8; ``kind`` ``"label"`` for its labels."""
    return read_image(ISBI / kind / f"{index}.png")
