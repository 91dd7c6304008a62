"""Label maps drawn over their image, for people to look at (CLI ``--overlay``, the service,
training previews).

The image is shown in gray (colour images are converted by luminance), contrast-stretched between
its 1st and 99th percentiles when it is not uint8; every class except class 0 is tinted with its
colour from :data:`PALETTE` at ``alpha`` opacity, and class boundaries are drawn opaque so thin
structures (membranes) stay visible. Result: ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.io.writers import encode_png, move_into_place, remove, temporary_path

#: Class colours (RGB), class k uses PALETTE[k % len(PALETTE)]; class 0 is left untinted.
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
    ],
    dtype=np.uint8,
)
#: ITU-R BT.601 luminance weights of R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: Opacity of the class tint.
DEFAULT_ALPHA = 0.4
#: Percentiles used to stretch non-uint8 images for display.
STRETCH_PERCENTILES = (1.0, 99.0)


def display_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 for display: luminance of colour images, percentile-stretched if not uint8."""
    pixels = image.astype(np.float32)
    if pixels.ndim == 3:
        pixels = pixels[..., :3] @ LUMA if pixels.shape[-1] >= 3 else pixels.mean(-1)
    if image.dtype == np.uint8:
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    low, high = np.percentile(pixels, STRETCH_PERCENTILES)
    scaled = (pixels - low) / max(float(high - low), 1e-12)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """True where a pixel's class differs from its right or lower neighbour."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``labels`` tinted over ``image`` (see the module docstring)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    gray = display_gray(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[labels.astype(np.int64) % len(PALETTE)].astype(np.float32)
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[tinted]
    edge = boundaries(labels) & tinted
    rgb[edge] = colours[edge]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, labels: np.ndarray, alpha: float = DEFAULT_ALPHA) -> Path:
    """Write :func:`overlay` as a PNG (temporary name, then renamed)."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        temporary.write_bytes(encode_png(overlay(image, labels, alpha)))
        move_into_place(temporary, path)
    finally:
        remove(temporary)
    return path
