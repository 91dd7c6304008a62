"""An exponential moving average of a model's weights (``optim.ema``), scored and saved instead of the
live weights.

With batch 2, strong augmentation and Adam, consecutive steps move the weights in noisy directions:
on ISBI the hold-out pixel error of successive epochs of one run wandered between 0.070 and 0.075
(docs/training.md, "Optimisation"). The average ``a <- a + (1 - d) (w - a)`` after every optimizer step keeps
the direction and cancels much of the noise (Polyak averaging; timm's ``ModelEmaV3``, torch's
``swa_utils.get_ema_multi_avg_fn``). Early on the decay is ``min(d, (1 + step) / (10 + step))`` so
the average does not stay anchored to the random initialisation.

Only parameters are averaged; buffers (BatchNorm running statistics) are copied from the live model,
and precise BatchNorm (``run.precise_bn``, :mod:`training.loop.batchnorm`) re-estimates them for the
averaged weights before every validation. The average is a whole model in the live one's memory
layout (channels_last), so validation, bundles and the Predictor use it as they would the model.

Public API: :class:`WeightAverage`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.errors import OptionError

#: Warm-up: the decay at step s is at most (1 + s) / (WARMUP + s).
WARMUP = 10


class WeightAverage:
    """The moving average of ``model``'s parameters with decay ``decay`` in (0, 1), as a model.

    ``average.model`` is a deep copy of the network holding the averaged weights; call
    :meth:`update` after every optimizer step with the number of steps taken before it.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise OptionError(f"optim.ema: decay {decay} must be in (0, 1); 0 turns averaging off")
        self.decay = decay
        self.model = copy.deepcopy(model)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update after step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (WARMUP + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s parameters; copy its buffers."""
        weight = 1.0 - self.decay_at(step)
        averaged = [p for p in self.model.parameters() if p.is_floating_point()]
        live = [p.detach() for p in model.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(averaged, live, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def follow_modes(self, model: nn.Module) -> None:
        """Put every module of the average in the train/eval mode of its twin in ``model`` (a
        frozen encoder's BatchNorm stays in eval mode, so precise BN leaves its statistics)."""
        for mine, theirs in zip(self.model.modules(), model.modules()):
            mine.training = theirs.training
