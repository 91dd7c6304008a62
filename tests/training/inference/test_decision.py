"""Labels from probabilities: argmax, a decision threshold, and its calibration."""

from __future__ import annotations

import numpy as np
import pytest

from training.inference.decision import CALIBRATION_THRESHOLDS, calibrate_threshold, check_threshold, decide


def two_class(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1]).astype(np.float32)


def test_argmax_without_a_threshold_and_p1_at_or_above_it_with_one():
    p1 = np.array([[0.1, 0.3, 0.5], [0.6, 0.75, 0.9]], np.float32)
    probs = np.stack([1 - p1, p1])
    probs[:, 0, 2] = 0.5  # an exact tie goes to the lower class
    assert decide(probs).tolist() == [[0, 0, 0], [1, 1, 1]]
    assert decide(probs, 0.3).tolist() == [[0, 1, 1], [1, 1, 1]]
    assert decide(probs, 0.75).tolist() == [[0, 0, 0], [0, 1, 1]]
    assert decide(probs, 0.75).dtype == np.uint8
    three = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    assert np.array_equal(decide(three), three.argmax(0))


def test_one_logit_models_threshold_their_single_probability():
    p = np.array([[[0.2, 0.5, 0.8]]], np.float32)
    assert decide(p).tolist() == [[0, 0, 1]]
    assert decide(p, 0.5).tolist() == [[0, 1, 1]]
    assert decide(p, 0.1).tolist() == [[1, 1, 1]]


def test_bad_thresholds_are_named():
    assert check_threshold(None, 5) is None
    assert check_threshold(0.25, 2) == 0.25
    with pytest.raises(ValueError, match="two-class model; this one has 3 classes"):
        check_threshold(0.5, 3)
    with pytest.raises(ValueError, match="1.5 is not a probability"):
        check_threshold(1.5, 2)
    with pytest.raises(ValueError, match="two-class"):
        decide(np.zeros((3, 2, 2), np.float32), 0.5)


def test_calibration_finds_the_threshold_that_undoes_a_bias():
    # Truth: class 1 where a latent score > 0; the "model" reports sigmoid(score - 1.4), which is
    # biased towards class 0: the unbiased decision is p1 >= sigmoid(-1.4) = 0.198 -> 0.2.
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=(32, 32)) * 3 for _ in range(3)]
    targets = [(s > 0).astype(np.int64) for s in scores]
    probs = [two_class(1 / (1 + np.exp(-(s - 1.4)))) for s in scores]

    def pixel_error(labels: list[np.ndarray]) -> float:
        return float(np.mean([np.mean(lab != t) for lab, t in zip(labels, targets)]))

    threshold, error = calibrate_threshold(probs, pixel_error)
    assert threshold == 0.2
    assert error == pixel_error([decide(p, 0.2) for p in probs]) < pixel_error([decide(p) for p in probs])
    assert error == min(pixel_error([decide(p, t) for p in probs]) for t in CALIBRATION_THRESHOLDS)


def test_calibration_ties_go_to_the_threshold_nearest_one_half():
    probs = [two_class(np.array([[0.01, 0.99]]))]
    assert calibrate_threshold(probs, lambda labels: 0.0) == (0.5, 0.0)
    # every threshold from 0.05 to 0.95 gives the same labels here
    assert calibrate_threshold(probs, lambda labels: float(labels[0].sum()))[0] == 0.5
