"""Evaluate a segmentation bundle on a dataset, through the same Predictor ``tessera predict`` uses.

Every image is predicted whole (tiled exactly by :class:`training.inference.predictor.Predictor`) and scored
against its mask with :mod:`training.loop.metrics`: pixel error, Dice and IoU per class and their means
(pooled over all pixels of all images, as the ISBI figures are), and the adapted Rand error of the
interior class (mean over images). The training loop validates with :func:`score` too, so the
numbers a run logs are the numbers ``tessera evaluate`` reports.

Metric names (flat): ``pixel_error``, ``dice``, ``iou`` (means over classes), ``dice_<class>``,
``iou_<class>``, ``rand_error`` (two-class tasks, or when an interior class is named).

:func:`calibrate` chooses a two-class model's decision threshold on labelled images by one of
:data:`training.loop.config.CALIBRATION_METRICS`; :func:`calibrate_bundle` does so for each
test-time augmentation mode and records the thresholds in the bundle. The trainer
(``run.threshold: calibrate``) and ``tessera calibrate`` both use them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.bundle import Bundle, load_bundle
from training.data.dataset import DatasetError, Example, SegmentationFolder
from training.errors import OptionError
from training.inference.decision import CALIBRATION_THRESHOLDS, calibrate_threshold
from training.inference.predictor import Predictor
from training.loop.config import CALIBRATION_METRICS, LOWER_IS_BETTER
from training.loop.metrics import MetricAccumulator

if TYPE_CHECKING:
    import torch


#: How many training images (evenly spaced) ``run.threshold: calibrate`` chooses the threshold on.
CALIBRATION_IMAGES = 5


def interior_class(classes: Sequence[str], name: str | None = None) -> int | None:
    """The class whose connected components the adapted Rand error compares: ``name``, or for a
    two-class task class 1 (ISBI: ``cell``); None (no Rand error) otherwise."""
    if name is not None:
        if name not in classes:
            raise OptionError(f"{name!r} is not a class ({', '.join(classes)}); cannot score the Rand error")
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
    predictor = Predictor(bundle if isinstance(bundle, Bundle) else load_bundle(bundle) if bundle else None,
                          device=device, tile=tile, tta=tta, threshold=threshold)
    classes = list(predictor.info.classes)
    interior = interior_class(classes, rand_class)
    folder = examples if isinstance(examples, SegmentationFolder) else None
    count = len(examples)
    if folder is not None:
        check_classes(folder, classes)
    total = MetricAccumulator(classes, interior)
    per_image = []
    start = time.monotonic()
    for index in range(count):
        example = folder.load(index) if folder is not None else examples[index]
        labels = predictor.predict(example.image).labels
        total.update(labels, example.target)
        per_image.append({"name": example.name, **score([labels], [example.target], classes, interior)})
        if overlays is not None:
            from training.loop.plots import plot_overlay  # noqa: PLC0415  (matplotlib, ~0.7 s: only for --overlays)

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


def check_classes(folder: SegmentationFolder, classes: Sequence[str]) -> None:
    """A ValueError unless the masks in ``folder`` have as many classes as the model predicts."""
    if folder.labels.num_classes != len(classes):
        raise DatasetError(
            f"the masks have {folder.labels.num_classes} classes ({', '.join(folder.labels.classes)}), "
            f"the model predicts {len(classes)} ({', '.join(classes)})"
        )


def calibration_subset(items: Sequence[Any]) -> Sequence[Any]:
    """Up to :data:`CALIBRATION_IMAGES` of ``items``, evenly spaced from the first (ISBI slices
    0-24: 0, 5, 10, 15, 20)."""
    return items[:: max(1, math.ceil(len(items) / CALIBRATION_IMAGES))]


def calibrate(
    predictor: Predictor,
    examples: Sequence[Example],
    metric: str,
    interior: int | None = None,
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
) -> tuple[float, float]:
    """The decision threshold (class 1 where ``p1 >= t``) whose labels score best on ``metric``
    over ``examples``, each predicted whole by ``predictor`` (a two-class
    :class:`~training.inference.predictor.Predictor`, with the test-time augmentation it will be used
    with), and that score. Scores pool the examples as :func:`score` does; ties go to the
    threshold nearest 0.5 (:func:`training.inference.decision.calibrate_threshold`)."""
    if metric not in CALIBRATION_METRICS:
        raise OptionError(f"cannot calibrate by {metric!r}; choose one of {', '.join(CALIBRATION_METRICS)}")
    classes = list(predictor.info.classes)
    if len(classes) != 2:
        raise OptionError(f"a decision threshold needs a two-class model; this one has {len(classes)} classes")
    if not examples:
        raise DatasetError("no labelled images to calibrate the threshold on")
    if metric == "rand_error" and interior is None:
        interior = interior_class(classes)
    probabilities = [predictor.predict(e.image, probabilities=True).probabilities for e in examples]
    targets = [e.target for e in examples]
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def loss(labels: list[np.ndarray]) -> float:
        return sign * score(labels, targets, classes, interior)[metric]

    threshold, value = calibrate_threshold(probabilities, loss, thresholds)
    return threshold, sign * value


def calibrate_bundle(
    bundle: Bundle,
    examples: Sequence[Example],
    metric: str,
    interior: int | None,
    modes: Sequence[str],
    device: str | torch.device = "auto",
) -> tuple[dict[str, float], dict[str, float]]:
    """Choose ``bundle``'s decision threshold anew (:func:`calibrate`) for each test-time
    augmentation mode in ``modes`` (``"none"``: without augmentation), and record them in
    ``bundle.info``: ``threshold`` for ``"none"`` when it is among ``modes``, ``tta_thresholds``
    for the others (replacing the recorded ones). Returns the thresholds and their scores by mode;
    the caller saves the bundle."""
    thresholds: dict[str, float] = {}
    scores: dict[str, float] = {}
    for mode in dict.fromkeys(modes):
        predictor = Predictor(bundle, device=device, tta=mode, threshold=None)
        thresholds[mode], scores[mode] = calibrate(predictor, examples, metric, interior)
    if "none" in thresholds:
        bundle.info.threshold = thresholds["none"]
    bundle.info.tta_thresholds = {mode: value for mode, value in thresholds.items() if mode != "none"}
    return thresholds, scores
