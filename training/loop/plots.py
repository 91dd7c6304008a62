"""PNG figures of a training run: metric curves per epoch, and prediction overlays.

Drawn with matplotlib's non-interactive Agg backend (no display needed). Overlays show, side by
side, the image, the ground truth and the prediction, with wrongly labelled pixels marked in red, so
a reader sees at a glance where a model fails (for ISBI: broken or spurious membranes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

#: Figure resolution in dots per inch.
DPI = 100
#: Colour of wrongly labelled pixels in overlays (RGB, 0-1) and its opacity.
ERROR_COLOUR = (1.0, 0.0, 0.0)
ERROR_ALPHA = 0.6


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per metric (training loss, validation loss and metrics) against the epoch."""
    path = Path(path)
    keys = [k for k in history[0] if k not in ("epoch", "seconds", "lr", "samples")] if history else []
    keys = [k for k in keys if any(isinstance(row.get(k), (int, float)) for row in history)]
    columns = max(1, min(3, len(keys)))
    rows = max(1, -(-len(keys) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        points = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        axis.set_title(key)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _display(image: np.ndarray) -> np.ndarray:
    """Pixels scaled to [0, 1] for display, per image (grayscale 2-D or RGB)."""
    pixels = image.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)


def plot_overlay(
    image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Image | ground truth | prediction with errors in red; ``truth`` may be None (then 2 panels).

    ``image`` is (H, W) or (H, W, C); ``truth`` and ``prediction`` are (H, W) class indices.
    """
    path = Path(path)
    panels = 3 if truth is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.3))
    shown = _display(image)
    axes[0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
    axes[0].set_title("image")
    classes = int(max(prediction.max(), truth.max() if truth is not None else 0)) or 1
    if truth is not None:
        axes[1].imshow(truth, cmap="gray", vmin=0, vmax=classes, interpolation="nearest")
        axes[1].set_title("ground truth")
    overlay = np.repeat((prediction.astype(np.float32) / classes)[..., None], 3, axis=-1)
    if truth is not None:
        wrong = prediction != truth
        overlay[wrong] = (1 - ERROR_ALPHA) * overlay[wrong] + ERROR_ALPHA * np.asarray(ERROR_COLOUR)
        axes[-1].set_title(f"prediction (errors red: {wrong.mean():.3f})")
    else:
        axes[-1].set_title("prediction")
    axes[-1].imshow(overlay, interpolation="nearest")
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
