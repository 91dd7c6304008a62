"""From class probabilities to class labels: argmax, or a decision threshold for two-class models.

``decide(probs, threshold)`` is the one rule every way in uses (Predictor, HTTP ``threshold=``,
evaluation): ``probs`` is ``(K, H, W)`` float; the result ``(H, W)`` holds class indices.

* ``threshold=None``: the argmax over classes (ties go to the lower index), or ``p > 0.5`` for a
  one-logit (sigmoid) model.
* ``threshold=t`` (two classes, or one logit): class 1 where its probability ``p1 >= t``.

Why a threshold: a loss that weighs classes unequally (the U-Net paper's border weight map makes a
membrane pixel between two cells count up to ~10x a cell pixel) trains probabilities that are
biased towards the heavy class, so the argmax paints membranes too thick. A threshold calibrated
on labelled images (:func:`calibrate_threshold`, chosen on *training* images during training and
recorded in the bundle) undoes the bias without retraining.

Public API: :func:`decide`, :func:`check_threshold`, :func:`calibrate_threshold`,
:data:`CALIBRATION_THRESHOLDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from training.errors import OptionError
from training.io.writers import label_dtype

#: Thresholds :func:`calibrate_threshold` tries: 0.05, 0.10, ..., 0.95.
CALIBRATION_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def check_threshold(threshold: float | None, num_classes: int) -> float | None:
    """``threshold`` as a float in [0, 1], or a ValueError naming the problem; None passes."""
    if threshold is None:
        return None
    if num_classes > 2:
        raise OptionError(f"a decision threshold needs a two-class model; this one has {num_classes} classes")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise OptionError(f"decision threshold {threshold} is not a probability between 0 and 1")
    return threshold


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class indices ``(H, W)`` from probabilities ``(K, H, W)`` (see the module docstring)."""
    classes = probs.shape[0]
    dtype = label_dtype(classes)
    if threshold is not None:
        check_threshold(threshold, classes)
        return (probs[-1] >= threshold).astype(dtype)
    if classes == 1:
        return (probs[0] > 0.5).astype(dtype)
    return probs.argmax(0).astype(dtype)


def calibrate_threshold(
    probabilities: Sequence[np.ndarray],
    loss: Callable[[list[np.ndarray]], float],
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
) -> tuple[float, float]:
    """The threshold whose label maps minimise ``loss`` (lower is better), and that loss.

    ``probabilities``: ``(K, H, W)`` maps of labelled images (K = 1 or 2); ``loss(labels)`` scores
    the list of label maps one threshold gives, e.g. pixel error or adapted Rand error against the
    masks. Ties go to the threshold nearest 0.5 (the unweighted decision).
    """
    best: tuple[float, float] | None = None  # (threshold, loss)
    for threshold in sorted(thresholds, key=lambda t: (abs(t - 0.5), t)):
        value = loss([decide(p, threshold) for p in probabilities])
        if best is None or value < best[1]:
            best = (threshold, value)
    if best is None:
        raise OptionError("no thresholds to calibrate over")
    return best
