"""Segmentation metrics: per-class Dice and IoU, pixel error, and the adapted Rand error.

Inputs are ``(H, W)`` integer arrays of class indices: ``pred`` (e.g. ``Prediction.labels``) and
``target`` (:data:`training.labels.IGNORE_INDEX` where ignored; ignored pixels are not scored).

* ``pixel_error`` -- fraction of labelled pixels whose predicted class is wrong.
* ``dice[c]`` = 2 TP / (2 TP + FP + FN), ``iou[c]`` = TP / (TP + FP + FN), per class name; NaN for
  a class absent from both prediction and truth (nothing to score), and means skip NaN.
* ``adapted_rand_error`` -- for boundary tasks (ISBI 2012: membranes separate cells), the adapted
  Rand error (:func:`skimage.metrics.adapted_rand_error`, default alpha 0.5) between the
  4-connected components of the predicted and the true *interior* class (ISBI: ``cell``). True
  pixels outside any interior component (membrane, ignored) are not counted (skimage ignores true
  label 0); predicted membrane pixels form their own segment. This is the convention of
  ``training/assets/isbi2012/README.md``. Averaged over images, not pooled.

Counts accumulate over images (:class:`MetricAccumulator`), so dataset Dice is pooled over all
pixels, as the ISBI figures are.

Public API: :func:`confusion_matrix`, :func:`scores`, :func:`adapted_rand_error`,
:func:`evaluate`, :class:`MetricAccumulator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error as _skimage_adapted_rand_error

from training.data.weightmap import CONNECTIVITY
from training.labels import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = true class, columns = predicted class; ignored pixels skipped."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    labelled = target != IGNORE_INDEX
    truth, guess = target[labelled].astype(np.int64), pred[labelled].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"target holds classes outside 0..{num_classes - 1}")
    if guess.size and (guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(f"prediction holds classes outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + guess, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray, classes: Sequence[str]) -> dict:
    """``pixel_error``, ``dice``/``iou`` per class name and their NaN-skipping means."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    total = confusion.sum()
    return {
        "pixel_error": float(1 - tp.sum() / total) if total else float("nan"),
        "dice": {name: float(v) for name, v in zip(classes, dice)},
        "iou": {name: float(v) for name, v in zip(classes, iou)},
        "mean_dice": _nanmean(dice),
        "mean_iou": _nanmean(iou),
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def adapted_rand_error(pred: np.ndarray, target: np.ndarray, interior_class: int) -> float:
    """Adapted Rand error between 4-connected components of ``interior_class`` in ``pred`` and in
    ``target`` (see the module docstring)."""
    truth, _ = ndimage.label(np.asarray(target) == interior_class, structure=CONNECTIVITY)
    guess, _ = ndimage.label(np.asarray(pred) == interior_class, structure=CONNECTIVITY)
    if truth.max() == 0:
        return float("nan")
    error, _, _ = _skimage_adapted_rand_error(truth, guess)
    return float(error)


class MetricAccumulator:
    """Pools counts over images; ``update(pred, target)`` per image, ``result()`` -> dict.

    Args:
        classes: class names, index order.
        interior_class: the interior class for :func:`adapted_rand_error` (ISBI: 1, ``cell``),
            or None to skip it.
    """

    def __init__(self, classes: Sequence[str], interior_class: int | None = None) -> None:
        self.classes = tuple(classes)
        self.interior_class = interior_class
        self.confusion = np.zeros((len(self.classes), len(self.classes)), np.int64)
        self.rand_errors: list[float] = []

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        self.confusion += confusion_matrix(pred, target, len(self.classes))
        if self.interior_class is not None:
            self.rand_errors.append(adapted_rand_error(pred, target, self.interior_class))

    def result(self) -> dict:
        result = scores(self.confusion, self.classes)
        if self.interior_class is not None:
            result["adapted_rand_error"] = _nanmean(np.asarray(self.rand_errors, np.float64))
        return result


def evaluate(
    pred: np.ndarray, target: np.ndarray, classes: Sequence[str], interior_class: int | None = None
) -> dict:
    """All metrics for one image (see :class:`MetricAccumulator`)."""
    accumulator = MetricAccumulator(classes, interior_class)
    accumulator.update(pred, target)
    return accumulator.result()
