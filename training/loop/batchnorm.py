"""Precise BatchNorm statistics: re-estimate running mean/variance on clean training patches.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of the
statistics of its last few batches -- with batch 2 and strong augmentation (elastic warps,
brightness, contrast, gamma, noise, blur) these are noisy and describe augmented inputs, not the
plain images inference sees. :func:`recompute_batchnorm` resets them and takes the exact average
over a fixed set of *un-augmented* training patches (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021: "precise BN"). Weights do not change; only the layers that are training
(``module.training``) are touched, so an encoder frozen with its statistics keeps them.

On an ISBI U-Net trained without it, 16 patches of 572 px moved the hold-out adapted Rand error at
thresholds 0.15-0.25 from 0.10-0.11 to 0.06-0.08 (docs/training.md, "BatchNorm statistics").

Public API: :func:`recompute_batchnorm`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from training.device import autocast


def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Replace the running statistics of ``model``'s training BatchNorm layers by their exact
    mean over ``batches`` (network inputs ``(N, C, H, W)``); returns how many layers changed.
    The model's train/eval modes and the layers' momenta are left as they were."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over every batch seen
    seen = 0
    try:
        with torch.no_grad(), autocast(device):
            for batch in batches:
                model(batch.to(device).contiguous(memory_format=torch.channels_last))
                seen += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not seen:
        raise ValueError("no batches to recompute BatchNorm statistics from")
    return len(layers)
