"""The paper's weight map: hand-computed values and the per-bounding-box computation against a
whole-image reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from training.data import IGNORE_INDEX, isbi2012
from training.data.weightmap import (
    W0,
    border_weights,
    border_weights_whole_image,
    class_balance_weights,
    exact_distance,
    object_instances,
    unet_weight_map,
)


def two_squares(gap: int) -> np.ndarray:
    """Class 1 squares 10x10 at rows 10-19, separated horizontally by ``gap`` background columns."""
    target = np.zeros((30, 40), np.int64)
    target[10:20, 5:15] = 1
    target[10:20, 15 + gap : 25 + gap] = 1
    return target


def test_pixel_between_two_objects_by_hand():
    target = two_squares(gap=7)  # gap columns 15..21, midway column 18
    weights = np.array([2.0, 0.5])
    w = unet_weight_map(target, weights)
    # pixel (14, 18): 4 px from the left square's column 14 and from the right square's column 22
    assert w[14, 18] == pytest.approx(2.0 + 10 * math.exp(-((4 + 4) ** 2) / (2 * 5**2)), rel=1e-6)
    # next to the left square: d1 = 1, d2 = 7
    assert w[14, 15] == pytest.approx(2.0 + 10 * math.exp(-((1 + 7) ** 2) / 50), rel=1e-6)
    assert w[12, 8] == pytest.approx(0.5)  # inside an object: w_c only
    # far away (row 0, column 0): d1 + d2 > 20 -> truncated to w_c
    assert w[0, 0] == pytest.approx(2.0)
    ignored = target.copy()
    ignored[14, 18] = IGNORE_INDEX
    assert unet_weight_map(ignored, weights)[14, 18] == 0.0


def test_single_object_has_no_border_term():
    target = np.zeros((20, 20), np.int64)
    target[5:9, 5:9] = 1
    np.testing.assert_array_equal(border_weights(object_instances(target, [1])), 0)


def test_class_balance_by_hand():
    target = np.array([[0, 0, 0, 1], [IGNORE_INDEX, 1, 0, 0]])
    weights = class_balance_weights(target, 3)  # 5 x class 0, 2 x class 1, none of class 2
    np.testing.assert_allclose(weights, [7 / (3 * 5), 7 / (3 * 2), 0.0])
    w = unet_weight_map(target, weights, w0=0)
    assert w[1, 0] == 0 and w[0, 3] == pytest.approx(7 / 6)


def test_instances_given_split_touching_objects():
    target = np.zeros((12, 20), np.int64)
    target[2:10, 2:18] = 1  # one connected component ...
    instances = np.zeros_like(target, dtype=np.int32)
    instances[2:10, 2:10], instances[2:10, 11:18] = 1, 2  # ... given as two instances, gap at column 10
    w = unet_weight_map(target, np.array([1.0, 1.0]), instances=instances)
    assert w[5, 10] == pytest.approx(1.0 + 10 * math.exp(-4 / 50), rel=1e-6)
    assert unet_weight_map(target, np.array([1.0, 1.0]))[5, 10] == pytest.approx(1.0)


def test_distance_is_exact_and_independent_of_the_buffer_address():
    # OpenCV's DIST_MASK_PRECISE output alone fails this: an ulp off on some pixels, which ones
    # depending on where the mask sat in memory, so training runs on the same data drifted apart.
    rng = np.random.default_rng(3)
    outside = rng.random((49, 47)) > 0.02
    zeros = np.argwhere(~outside)
    pixels = np.indices(outside.shape).reshape(2, -1).T
    squared = ((pixels[:, None, :] - zeros[None, :, :]) ** 2).sum(-1).min(1).reshape(outside.shape)
    expected = np.sqrt(squared).astype(np.float32)
    buffer = np.zeros(outside.size + 64, bool)
    for offset in range(8):
        moved = buffer[offset : offset + outside.size].reshape(outside.shape)
        moved[:] = outside
        np.testing.assert_array_equal(exact_distance(moved), expected)


@pytest.mark.parametrize("zeros", [0.001, 0.05])
def test_distance_equals_scipy_bit_for_bit_on_large_masks(zeros: float) -> None:
    rng = np.random.default_rng(7)
    outside = rng.random((300, 280)) >= zeros  # sparse zeros: distances up to ~40 px
    expected = ndimage.distance_transform_edt(outside).astype(np.float32)
    buffer = np.zeros(outside.size + 64, bool)
    for offset in (0, 3, 13):
        moved = buffer[offset : offset + outside.size].reshape(outside.shape)
        moved[:] = outside
        np.testing.assert_array_equal(exact_distance(moved), expected)


def test_distance_is_exact_far_from_the_nearest_zero() -> None:
    outside = np.ones((1500, 1400), bool)
    outside[0, 0] = outside[1499, 700] = False  # distances up to ~1560 px
    expected = ndimage.distance_transform_edt(outside).astype(np.float32)
    np.testing.assert_array_equal(exact_distance(outside), expected)


def test_per_bbox_equals_whole_image_reference_on_isbi():
    target = isbi2012().load(7).target[:192, :256]
    instances = object_instances(target, [1])
    assert instances.max() > 10
    np.testing.assert_array_equal(border_weights(instances), border_weights_whole_image(instances))


def test_whole_image_reference_by_hand():
    target = two_squares(gap=7)
    term = border_weights_whole_image(object_instances(target, [1]))
    assert term[14, 18] == pytest.approx(10 * math.exp(-64 / 50), rel=1e-6)
    assert term[0, 0] == 0 and term[12, 8] == 0


def test_per_bbox_equals_reference_on_random_blobs():
    rng = np.random.default_rng(1)
    blobs = ndimage.gaussian_filter(rng.random((70, 90)), 2) > 0.52
    instances, _ = ndimage.label(blobs)
    assert instances.max() >= 5
    np.testing.assert_array_equal(border_weights(instances), border_weights_whole_image(instances))


def test_isbi_slice_weight_range():
    target = isbi2012().load(0).target
    weights = class_balance_weights(target, 2)
    w = unet_weight_map(target, weights)
    assert w.dtype == np.float32 and w.shape == target.shape
    assert w.min() == pytest.approx(weights[1])  # cell interiors far from others: w_c only
    assert weights[0] + 5 < w.max() <= weights[0] + W0  # membranes between cells: up to w_c + w0
