"""The one way tests make a bundle: a tiny model with fixed random weights, its head optionally
centred so that its labels are not all one class.

A random network puts (almost) every pixel in one class; masks of one value would make equality
tests weak, so :func:`make_bundle` can shift the head's bias by the median logit it gives a probe
input. The probe decides how the network sees it: a tensor is fed to the network as it is,
``"noise"`` is uniform noise drawn from the seed, and an image goes through a
:class:`~training.inference.predictor.Predictor` (normalisation, mirror padding, tiling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.bundle import Bundle, new_bundle_info, save_bundle
from training.inference.predictor import Predictor
from training.models import build_model
from training.normalization import Normalization

#: A classic U-Net small enough for exactness and I/O tests (margin 20 px at depth 2, stride 4).
TINY_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid"}
#: A small same-padded smp U-Net on gray input (stride 8, measured halo 64 px).
SMALL_SMP = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 1, "num_classes": 2,
             "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
#: The smallest smp U-Net (one down-sampling, stride 2, a receptive field of a few pixels): a whole
#: halo scan runs in seconds.
TINY_SMP = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 1, "num_classes": 2,
            "encoder_depth": 1, "decoder_channels": [8]}
#: Side of the ``"noise"`` probe, pixels (a valid input of the tiny U-Net at depths 2 and 3).
NOISE_SIZE = 140


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running statistics so eval-mode tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def make_bundle(
    spec: dict = TINY_UNET,
    path: Path | None = None,
    *,
    seed: int = 0,
    classes: list[str] | None = None,
    batchnorm_statistics: bool = True,
    probe: torch.Tensor | np.ndarray | str | None = None,
    each_class: bool = False,
    threshold: float | None = None,
) -> Bundle:
    """A model built from ``spec`` after ``torch.manual_seed(seed)``, in eval mode, as a bundle.

    ``classes``: the class names (default ``c0``, ``c1``, ...). ``batchnorm_statistics``: random
    running statistics (:func:`randomise_batchnorm` of ``seed``) instead of zeros and ones.
    ``probe``: centre the head on it (see the module); the shift makes the median logit
    difference of class 1 over class 0 zero, or with ``each_class`` (tensor and noise probes)
    moves every class's median logit to the mean of them (to zero for one class).
    ``threshold``: the bundle's decision threshold. With ``path`` the bundle is also saved there
    and ``Bundle.path`` is set.
    """
    torch.manual_seed(seed)
    model = build_model(spec)
    if batchnorm_statistics:
        randomise_batchnorm(model, seed)
    model.eval()
    classes = classes or [f"c{i}" for i in range(spec["num_classes"])]
    if isinstance(probe, str):
        if probe != "noise":
            raise ValueError(f"probe must be a tensor, an image or 'noise', not {probe!r}")
        probe = noise_probe(spec, seed)
    if probe is not None:
        centre_head(model, head_shift(model, spec, classes, probe, each_class))
    info = new_bundle_info(spec, model, classes, Normalization())
    if threshold is not None:
        info.threshold = threshold
    if path is not None:
        path = save_bundle(path, model, info)
    return Bundle(model=model, info=info, path=path)


def noise_probe(spec: dict, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [0, 1), ``(1, in_channels, NOISE_SIZE, NOISE_SIZE)``, from a generator
    of its own seeded with ``seed`` (the global one is left alone)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, spec["in_channels"], NOISE_SIZE, NOISE_SIZE, generator=generator)


def head_shift(
    model: torch.nn.Module, spec: dict, classes: list[str], probe: torch.Tensor | np.ndarray, each_class: bool
) -> torch.Tensor:
    """What to subtract from the head's bias (one value per class) to centre it on ``probe``."""
    shift = torch.zeros(spec["num_classes"])
    with torch.no_grad():
        if isinstance(probe, np.ndarray):
            bundle = Bundle(model=model, info=new_bundle_info(spec, model, classes, Normalization()))
            p1 = Predictor(bundle, device="cpu").predict(probe, probabilities=True).probabilities[1]
            p1 = np.clip(p1.astype(np.float64), 1e-12, 1 - 1e-12)
            shift[1] = float(np.median(np.log(p1) - np.log1p(-p1)))
        elif each_class:
            centre = model(probe).median(-1).values.median(-1).values[0]
            shift = centre - (centre.mean() if spec["num_classes"] > 1 else 0)
        else:
            logits = model(probe)[0]
            shift[1] = (logits[1] - logits[0]).median()
    return shift


def centre_head(model: torch.nn.Module, shift: torch.Tensor) -> None:
    """Subtract ``shift`` from the bias of the network's last convolution (its head)."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.bias -= shift
