"""Precise BatchNorm statistics: exact averages over clean batches, frozen layers untouched."""

from __future__ import annotations

import copy

import torch

from tests.support.bundles import TINY_UNET
from training.loop.batchnorm import recompute_batchnorm
from training.models import build_model


def batches(count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 1, 60, 60, generator=generator) * (i + 1) for i in range(count)]


def first_layer_inputs(model: torch.nn.Module, data: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the first BatchNorm layer sees for each batch (an eval-mode copy: nothing updates)."""
    model = copy.deepcopy(model).eval()
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    with torch.no_grad():
        for batch in data:
            model(batch)
    handle.remove()
    return seen


def test_running_statistics_become_the_exact_average_over_the_batches():
    torch.manual_seed(0)
    model = build_model(TINY_UNET).train()
    data = batches()
    inputs = first_layer_inputs(model, data)  # the first layer's inputs do not depend on any statistics
    layers = recompute_batchnorm(model, data, torch.device("cpu"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert layers == len(norms) > 0
    assert all(n.momentum == 0.1 and n.training for n in norms)
    mean = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(norms[0].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norms[0].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(norms[0].num_batches_tracked) == len(data)


def test_layers_in_eval_mode_keep_their_statistics():
    torch.manual_seed(0)
    model = build_model(TINY_UNET).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = norms[0].eval()
    before = frozen.running_mean.clone(), frozen.running_var.clone()
    assert recompute_batchnorm(model, batches(), torch.device("cpu")) == len(norms) - 1
    assert torch.equal(frozen.running_mean, before[0]) and torch.equal(frozen.running_var, before[1])
    assert not torch.equal(norms[1].running_mean, torch.zeros_like(norms[1].running_mean))


def test_a_model_without_batchnorm_is_left_alone():
    model = build_model({**TINY_UNET, "norm": "none"}).train()
    assert recompute_batchnorm(model, batches(1), torch.device("cpu")) == 0
