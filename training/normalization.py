"""Input normalisation, recorded in every bundle so inference does exactly what training did.

Raw pixels are first scaled to [0, 1] by their integer type's maximum (uint8 / 255, uint16 /
65535; floats are kept), then standardised per channel: ``(x - mean) / std``.

* ``mode="image"`` (default, nnU-Net's choice for non-CT images): mean and std are computed over
  the *whole image*, never per patch or per tile, so tiles of one image share one normalisation.
  For images larger than memory the statistics are streamed block by block.
* ``mode="fixed"``: mean and std are dataset statistics stored in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from training.errors import OptionError
from training.mirror import ArrayLike2D

#: Rows read at a time when streaming statistics over a large image (fewer for wide images).
STATS_BLOCK_ROWS = 1024
#: Most pixels read at a time when streaming statistics, so memory does not grow with the width.
STATS_BLOCK_PIXELS = 2**22
#: Smallest std used, so flat images do not divide by zero.
MIN_STD = 1e-6


def scale_to_unit(pixels: np.ndarray) -> np.ndarray:
    """Raw pixels as float32 in [0, 1] for integer types (by the type's maximum), as-is for floats."""
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return pixels.astype(np.float32, copy=False)


def channels_last(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W, 1)``; ``(H, W, C)`` unchanged."""
    return pixels[..., None] if pixels.ndim == 2 else pixels


@dataclass(frozen=True)
class Normalization:
    """How raw pixels become network input. See the module docstring."""

    mode: Literal["image", "fixed"] = "image"
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))

    def __post_init__(self) -> None:
        if self.mode not in ("image", "fixed"):
            raise OptionError(f"normalisation mode must be 'image' or 'fixed', not {self.mode!r}")

    def statistics(self, image: ArrayLike2D) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) to use for ``image`` ``(H, W[, C])``, streamed for ``image`` mode."""
        if self.mode == "fixed":
            return np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        return image_statistics(image)

    @staticmethod
    def apply(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Raw ``(H, W[, C])`` pixels -> float32 ``(C, H, W)`` network input."""
        unit = channels_last(scale_to_unit(pixels))
        scaled = (unit - mean.astype(np.float32)) / np.maximum(std, MIN_STD).astype(np.float32)
        return np.ascontiguousarray(np.moveaxis(scaled, -1, 0))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        return cls(mode=data["mode"], mean=tuple(data["mean"]), std=tuple(data["std"]))


def image_statistics(image: ArrayLike2D) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of a whole image after :func:`scale_to_unit`, read in row blocks
    of at most :data:`STATS_BLOCK_ROWS` rows and :data:`STATS_BLOCK_PIXELS` pixels, so memory
    stays bounded (and independent of the image size) for images larger than RAM."""
    height, width = image.shape[:2]
    rows = max(1, min(STATS_BLOCK_ROWS, STATS_BLOCK_PIXELS // max(width, 1)))
    total = sum_sq = None
    count = 0
    for y0 in range(0, height, rows):
        block = channels_last(scale_to_unit(np.asarray(image[y0 : y0 + rows])))
        flat = block.reshape(-1, block.shape[-1]).astype(np.float64)
        total = flat.sum(0) if total is None else total + flat.sum(0)
        sum_sq = (flat**2).sum(0) if sum_sq is None else sum_sq + (flat**2).sum(0)
        count += flat.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(sum_sq / count - mean**2, 0.0))
    return mean, std

