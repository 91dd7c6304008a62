"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import IGNORE_INDEX, isbi2012
from training.loop.metrics import MetricAccumulator, adapted_rand_error, confusion_matrix, evaluate, scores

TARGET = np.array([[0, 0, 1, 1], [0, 1, 1, IGNORE_INDEX]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])


def test_confusion_and_scores_by_hand():
    confusion = confusion_matrix(PRED, TARGET, 2)
    # labelled pixels: truth 0 at (0,0) (0,1) (1,0) -> pred 0, 1, 0; truth 1 at (0,2) (0,3) (1,1) (1,2) -> 1, 1, 0, 1
    np.testing.assert_array_equal(confusion, [[2, 1], [1, 3]])
    result = scores(confusion, ["membrane", "cell"])
    assert result["pixel_error"] == pytest.approx(2 / 7)
    assert result["dice"] == pytest.approx({"membrane": 4 / 6, "cell": 6 / 8})
    assert result["iou"] == pytest.approx({"membrane": 2 / 4, "cell": 3 / 5})
    assert result["mean_dice"] == pytest.approx((4 / 6 + 6 / 8) / 2)


def test_absent_class_is_nan_and_skipped_in_means():
    result = evaluate(np.zeros((2, 2), int), np.zeros((2, 2), int), ["a", "b", "c"])
    assert result["dice"]["a"] == 1.0 and math.isnan(result["dice"]["b"])
    assert result["mean_dice"] == 1.0 and result["pixel_error"] == 0.0


def test_adapted_rand_error_merge_by_hand():
    # true: two 2x2 cells (class 1) separated by a membrane column (class 0); pred merges them
    target = np.zeros((2, 5), int)
    target[:, :2] = target[:, 3:] = 1
    merged = np.ones((2, 5), int)
    # p_ij = [[4], [4]]: sum p^2 - n = 24; true sizes 4, 4: 24; pred sizes 8 (the merged segment
    # covers the 2 membrane pixels too, but they are not counted): 56 -> F = 24 / 40
    assert adapted_rand_error(merged, target, interior_class=1) == pytest.approx(0.4)
    assert adapted_rand_error(target, target, interior_class=1) == pytest.approx(0.0)


def test_adapted_rand_error_split_by_hand():
    target = np.ones((2, 4), int)  # one true cell of 8 pixels
    split = np.array([[1, 1, 0, 1], [1, 1, 0, 1]])  # two predicted cells (4 and 2) and 2 membrane pixels
    # p_ij over the true cell: 4 (segment 1), 2 (segment 2), 2 (predicted membrane, label 0)
    # sum p^2 - n = 16 + 4 + 4 - 8 = 16; true: 64 - 8 = 56; pred: 16 + 4 + 4 - 8 = 16 -> F = 16 / 36
    assert adapted_rand_error(split, target, interior_class=1) == pytest.approx(1 - 16 / 36)


def test_accumulator_pools_counts_and_averages_rand():
    accumulator = MetricAccumulator(["membrane", "cell"], interior_class=1)
    accumulator.update(PRED, TARGET)
    accumulator.update(TARGET.clip(0), TARGET)  # a perfect image (ignored pixel predicted as 0)
    result = accumulator.result()
    assert result["pixel_error"] == pytest.approx(2 / 14)
    assert result["dice"]["membrane"] == pytest.approx((4 + 6) / (6 + 6))
    single = evaluate(PRED, TARGET, ["membrane", "cell"], interior_class=1)["adapted_rand_error"]
    assert result["adapted_rand_error"] == pytest.approx(single / 2)


def test_isbi_truth_scores_perfectly():
    target = isbi2012().load(25).target
    result = evaluate(target, target, ["membrane", "cell"], interior_class=1)
    assert result["pixel_error"] == 0.0 and result["dice"]["membrane"] == 1.0
    assert result["adapted_rand_error"] == pytest.approx(0.0)
    everything_cell = evaluate(np.ones_like(target), target, ["membrane", "cell"], interior_class=1)
    assert everything_cell["pixel_error"] == pytest.approx((target == 0).mean())
    assert everything_cell["adapted_rand_error"] > 0.5


def test_shape_and_class_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(np.full((2, 2), 2), np.zeros((2, 2), int), 2)
