"""Evaluate a segmentation bundle on a dataset, through the same Predictor ``tessera predict`` uses.

Every image is predicted whole (tiled exactly by :class:`training.predictor.Predictor`) and scored
against its mask with :mod:`training.metrics`: pixel error, Dice and IoU per class and their means
(pooled over all pixels of all images, as the ISBI figures are), and the adapted Rand error of the
interior class (mean over images). The training loop validates with :func:`score` too, so the
numbers a run logs are the numbers ``tessera evaluate`` reports.

Metric names (flat): ``pixel_error``, ``dice``, ``iou`` (means over classes), ``dice_<class>``,
``iou_<class>``, ``rand_error`` (two-class tasks, or when an interior class is named).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.bundle import Bundle, load_bundle
from training.data.dataset import Example, SegmentationFolder
from training.metrics import MetricAccumulator


def interior_class(classes: Sequence[str], name: str | None = None) -> int | None:
    """The class whose connected components the adapted Rand error compares: ``name``, or for a
    two-class task class 1 (ISBI: ``cell``); None (no Rand error) otherwise."""
    if name is not None:
        if name not in classes:
            raise ValueError(f"{name!r} is not a class ({', '.join(classes)}); cannot score the Rand error")
        return list(classes).index(name)
    return 1 if len(classes) == 2 else None


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A :class:`MetricAccumulator` result as flat ``name -> number`` (see the module docstring)."""
    flat = {"pixel_error": result["pixel_error"], "dice": result["mean_dice"], "iou": result["mean_iou"]}
    flat.update({f"dice_{name}": value for name, value in result["dice"].items()})
    flat.update({f"iou_{name}": value for name, value in result["iou"].items()})
    if "adapted_rand_error" in result:
        flat["rand_error"] = result["adapted_rand_error"]
    return flat


def score(
    predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray], classes: Sequence[str], interior: int | None
) -> dict[str, float]:
    """Flat metrics of predicted label maps against targets, pooled over the images."""
    accumulator = MetricAccumulator(classes, interior)
    for prediction, target in zip(predictions, targets):
        accumulator.update(prediction, target)
    return flat_metrics(accumulator.result())


def evaluate_bundle(
    bundle: Bundle | str | Path | None,
    examples: SegmentationFolder | Sequence[Example],
    device: str = "auto",
    tile: int | str | None = None,
    tta: bool | str = False,
    threshold: float | str | None = "bundle",
    overlays: str | Path | None = None,
    rand_class: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict and score every example; returns ``{"metrics", "images": [{"name", metrics...}],
    "seconds", "bundle"}``. ``overlays``: a folder for ``<name>.png`` figures (image, truth,
    prediction with errors in red)."""
    from training.predictor import Predictor

    predictor = Predictor(bundle if isinstance(bundle, Bundle) else load_bundle(bundle) if bundle else None,
                          device=device, tile=tile, tta=tta, threshold=threshold)
    classes = list(predictor.info.classes)
    interior = interior_class(classes, rand_class)
    folder = examples if isinstance(examples, SegmentationFolder) else None
    count = len(examples)
    if folder is not None and folder.labels.num_classes != len(classes):
        raise ValueError(
            f"the masks have {folder.labels.num_classes} classes ({', '.join(folder.labels.classes)}), "
            f"the model predicts {len(classes)} ({', '.join(classes)})"
        )
    total = MetricAccumulator(classes, interior)
    per_image = []
    start = time.monotonic()
    for index in range(count):
        example = folder.load(index) if folder is not None else examples[index]
        labels = predictor.predict(example.image).labels
        total.update(labels, example.target)
        per_image.append({"name": example.name, **score([labels], [example.target], classes, interior)})
        if overlays is not None:
            from training.plots import plot_overlay

            shown = np.where(example.target < 0, labels, example.target)
            plot_overlay(example.image, shown, labels, Path(overlays) / f"{example.name}.png", example.name)
        if progress is not None:
            progress(index + 1, count)
    path = predictor.bundle.path
    return {
        "bundle": str(path) if path else None,
        "classes": classes,
        "metrics": flat_metrics(total.result()),
        "images": per_image,
        "seconds": round(time.monotonic() - start, 2),
    }
