"""Losses against hand-computed values: weights, ignore index, binary and multi-class."""

from __future__ import annotations

import math

import pytest
import torch

from training.data import IGNORE_INDEX
from training.loop.losses import build_loss, cross_entropy, soft_dice

# Two pixels: a has logits (0, ln 3) -> p = (1/4, 3/4), class 1; b has (0, 0) -> (1/2, 1/2), class 0.
LOGITS = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).reshape(1, 2, 1, 2)
TARGET = torch.tensor([[[1, 0]]])
WEIGHT = torch.tensor([[[1.0, 3.0]]])


def test_cross_entropy_weighted_mean_by_hand():
    expected = (1 * -math.log(0.75) + 3 * math.log(2)) / 4
    assert cross_entropy(LOGITS, TARGET, WEIGHT).item() == pytest.approx(expected, rel=1e-6)
    unweighted = (-math.log(0.75) + math.log(2)) / 2
    assert build_loss("ce")(LOGITS, TARGET).item() == pytest.approx(unweighted, rel=1e-6)


def test_ignored_pixels_contribute_nothing():
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    assert cross_entropy(LOGITS, target, WEIGHT).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # dice with pixel b ignored: class 0 has p = 1/4 and no truth, class 1 has p = g = 3/4, 1
    expected = 1 - ((0 + 1e-5) / (0.25 + 1e-5) + (1.5 + 1e-5) / (1.75 + 1e-5)) / 2
    assert soft_dice(LOGITS, target).item() == pytest.approx(expected, rel=1e-5)
    everything_ignored = torch.full_like(TARGET, IGNORE_INDEX)
    assert cross_entropy(LOGITS, everything_ignored).item() == 0.0


def test_soft_dice_by_hand():
    dice0, dice1 = 1 / 1.75, 1.5 / 2.25
    assert soft_dice(LOGITS, TARGET).item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-4)
    weighted0, weighted1 = 3 / 4.75, 1.5 / 3.25
    assert soft_dice(LOGITS, TARGET, WEIGHT).item() == pytest.approx(1 - (weighted0 + weighted1) / 2, rel=1e-4)


def test_dice_ce_is_weighted_ce_plus_plain_dice():
    loss = build_loss()(LOGITS, TARGET, WEIGHT).item()
    assert loss == pytest.approx(cross_entropy(LOGITS, TARGET, WEIGHT).item() + soft_dice(LOGITS, TARGET).item())
    assert loss != pytest.approx(cross_entropy(LOGITS, TARGET, WEIGHT).item() + soft_dice(LOGITS, TARGET, WEIGHT).item())


def test_dice_alone_takes_the_weights():
    assert build_loss("dice")(LOGITS, TARGET, WEIGHT).item() == pytest.approx(soft_dice(LOGITS, TARGET, WEIGHT).item())


def test_binary_single_logit():
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)  # p(positive) = 1/2, 3/4
    target = torch.tensor([[[1, 0]]])
    expected = (math.log(2) - math.log(0.25)) / 2
    assert build_loss("bce")(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # negative class: p = 1/2, 1/4 vs truth 0, 1; positive: 1/2, 3/4 vs 1, 0
    neg = 2 * 0.25 / (0.75 + 1)
    pos = 2 * 0.5 / (1.25 + 1)
    assert soft_dice(logits, target).item() == pytest.approx(1 - (neg + pos) / 2, rel=1e-4)


def test_perfect_prediction_and_gradient():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert build_loss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    build_loss()(logits, target, torch.ones(1, 2, 2)).backward()
    assert logits.grad is not None and logits.grad[0, 1, 1, 1] < 0  # raise the true class


def test_unknown_loss_and_size_mismatch():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal")
    with pytest.raises(ValueError, match="differ in size"):
        build_loss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 3, dtype=torch.int64))
