"""The moving average of weights (training/loop/averaging.py): the update rule, its warm-up, buffers
and modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.loop.averaging import WARMUP, WeightAverage


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 1, 1))


def test_update_is_the_exponential_average_after_warm_up() -> None:
    model = net()
    average = WeightAverage(model, decay=0.99)
    before = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    step = 10_000
    assert average.decay_at(step) == 0.99
    average.update(model, step)
    for old, new, live in zip(before, average.model.parameters(), model.parameters()):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * live)


def test_warm_up_follows_the_live_weights_early() -> None:
    model = net()
    average = WeightAverage(model, decay=0.999)
    assert average.decay_at(0) == pytest.approx(1 / WARMUP)
    assert average.decay_at(90) == pytest.approx(91 / 100)
    old = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    average.update(model, 0)
    for before, new, live in zip(old, average.model.parameters(), model.parameters()):
        torch.testing.assert_close(new, 0.1 * before + 0.9 * live)


def test_buffers_are_copied_and_the_live_model_is_untouched() -> None:
    model = net()
    average = WeightAverage(model, decay=0.5)
    model.train()
    model(torch.randn(2, 1, 8, 8) * 3 + 1)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    average.update(model, 100)
    bn = average.model[1]
    assert torch.equal(bn.running_mean, model[1].running_mean)
    assert torch.equal(bn.num_batches_tracked, model[1].num_batches_tracked)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.items())
    assert not any(p.requires_grad for p in average.model.parameters())


def test_follow_modes_copies_train_and_eval_per_module() -> None:
    model = net()
    average = WeightAverage(model, decay=0.9)
    average.model.eval()
    model.train()
    model[1].eval()  # a frozen layer keeps its statistics
    average.follow_modes(model)
    assert [m.training for m in average.model.modules()] == [True, True, False, True]


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        WeightAverage(net(), decay)
