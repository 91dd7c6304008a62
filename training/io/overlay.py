"""Label maps drawn over their image, for people to look at (CLI ``--overlay``, the service,
training previews).

The image is shown in gray (colour images are converted by luminance), contrast-stretched between
its 1st and 99th percentiles when it is not uint8; the *foreground* classes -- what a person looks
for, :func:`foreground_classes`: the bundle's ``overlay_classes``, else every class not named
``background`` -- are tinted with their colour from :data:`PALETTE` at ``alpha`` opacity, and
their boundaries are drawn opaque so thin structures (membranes) stay visible; every other class
is left as the image. Result: ``(H, W, 3)`` uint8 RGB. The service's page, ``?output=overlay``,
``tessera predict --overlay`` and batch overlays all draw with :func:`overlay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.io.writers import encode_png, move_into_place, remove, temporary_path

if TYPE_CHECKING:
    from training.bundle import BundleInfo

#: Class colours (RGB), class k uses PALETTE[k % len(PALETTE)].
PALETTE = np.array(
    [
        (255, 140, 0),
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


#: The class name never tinted when a bundle names no ``overlay_classes``.
BACKGROUND = "background"


def foreground_classes(info: BundleInfo) -> list[int]:
    """Indices of the classes an overlay of ``info``'s model tints: its ``overlay_classes`` when
    set, else every class whose name is not ``background`` (case-insensitive)."""
    if info.overlay_classes is not None:
        return sorted({int(k) for k in info.overlay_classes})
    return [k for k, name in enumerate(info.classes) if name.strip().lower() != BACKGROUND]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """True where a pixel's class differs from its right or lower neighbour."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, foreground: Sequence[int], alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``(H, W, 3)`` uint8: the ``foreground`` classes of ``labels`` tinted over ``image`` (see
    the module docstring; ``foreground`` from :func:`foreground_classes`)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    gray = display_gray(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[labels.astype(np.int64) % len(PALETTE)].astype(np.float32)
    tinted = np.isin(labels, np.asarray(foreground, dtype=np.int64))
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[tinted]
    edge = boundaries(labels) & tinted
    rgb[edge] = colours[edge]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save_overlay(
    path: str | Path, image: np.ndarray, labels: np.ndarray, foreground: Sequence[int], alpha: float = DEFAULT_ALPHA
) -> Path:
    """Write :func:`overlay` as a PNG (temporary name, then renamed)."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        temporary.write_bytes(encode_png(overlay(image, labels, foreground, alpha)))
        move_into_place(temporary, path)
    finally:
        remove(temporary)
    return path
