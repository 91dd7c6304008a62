"""Model builders: one registry from a JSON-able spec to a network.

A *spec* is a dict ``{"arch": ..., **arguments}`` stored verbatim in every bundle, so a bundle
rebuilds exactly the network it was trained with:

* ``{"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 4, "width": 64,
  "padding": "valid", "norm": "batch", "dropout": 0.0}`` -- the classic U-Net;
* ``{"arch": "smp", "name": "Unet", "encoder": "resnet34", "in_channels": 3, "num_classes": 2}``
  -- any segmentation-models-pytorch architecture and encoder;
* ``{"arch": "classifier", "encoder": "resnet18", "in_channels": 1, "num_classes": 10}`` -- a
  backbone as an image classifier.

Segmentation models carry a ``geometry`` attribute (:class:`training.geometry.TileGeometry`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.errors import OptionError
from training.geometry import TileGeometry
from training.models.classifier import Classifier
from training.models.smp import build_smp, load_encoder_weights
from training.models.unet import UNet

__all__ = [
    "Classifier",
    "UNet",
    "build_model",
    "count_parameters",
    "load_encoder_weights",
    "measure_halo",
    "spec_geometry",
]

#: The 2015 paper's configuration (add ``"norm": "none"`` for the paper's exact network).
PAPER_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 4, "width": 64, "padding": "valid"}

#: Share of the impulse-response mass a same-padded tile's halo must contain.
HALO_MASS = 0.999


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the network a spec describes, with random weights (nothing is downloaded)."""
    arguments = dict(spec)
    arch = arguments.pop("arch", None)
    if arch == "unet":
        return UNet(**arguments)
    if arch == "smp":
        return build_smp(**arguments)
    if arch == "classifier":
        return Classifier(**arguments)
    raise OptionError(f"unknown architecture {arch!r}: expected 'unet', 'smp' or 'classifier'")


def spec_geometry(spec: dict[str, Any]) -> TileGeometry:
    """The tile geometry of a segmentation spec, without building the network (halo unmeasured
    for same padding: 0)."""
    if spec.get("arch") == "unet":
        return TileGeometry(padding=spec.get("padding", "valid"), depth=spec.get("depth", 4))
    if spec.get("arch") == "smp":
        return TileGeometry(padding="same", depth=spec.get("encoder_depth", 5), halo=0, kind="stride")
    raise OptionError(f"architecture {spec.get('arch')!r} is not a segmentation network")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def measure_halo(model: nn.Module, in_channels: int, geometry: TileGeometry, size: int = 512) -> int:
    """Effective receptive border of a same-padded network, in pixels, rounded up to the stride.

    The response of the output to a small impulse at the centre of a mirror-free random image is
    measured; the halo is the radius holding :data:`HALO_MASS` of it. Tiles with this much context
    reproduce a whole-image pass up to rare label flips (see the tiler tests).
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, in_channels, size, size, generator=generator)
    bumped = base.clone()
    centre = size // 2
    bumped[..., centre, centre] += 1.0
    response = (model(bumped) - model(base)).abs().sum(dim=(0, 1))
    model.train(was_training)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = torch.maximum((ys - centre).abs(), (xs - centre).abs()).flatten()
    mass = torch.zeros(size, dtype=torch.float64).index_add_(0, radius, response.flatten().double())
    cumulative = torch.cumsum(mass, 0) / mass.sum().clamp_min(1e-30)
    reach = int(torch.searchsorted(cumulative, torch.tensor([HALO_MASS], dtype=torch.float64)).item())
    return -(-max(reach, 1) // geometry.stride) * geometry.stride


def parse_arch(text: str, in_channels: int = 1, num_classes: int = 2, **options: Any) -> dict[str, Any]:
    """A spec from the short names the CLI and YAML configs use.

    ``"unet"`` -> the classic U-Net (``options`` may set depth, width, padding, norm, dropout);
    ``"smp.Unet:resnet34"`` -> an smp architecture with an encoder;
    ``"classifier:resnet18"`` -> a backbone as a classifier.
    """
    base = {"in_channels": in_channels, "num_classes": num_classes}
    given = {k: v for k, v in options.items() if v is not None}
    if text == "unet":
        return {"arch": "unet", **base, **given}
    head, _, encoder = text.partition(":")
    if head.startswith("smp.") and encoder:
        return {"arch": "smp", "name": head[len("smp."):], "encoder": encoder, **base, **given}
    if head == "classifier" and encoder:
        return {"arch": "classifier", "encoder": encoder, **base, **given}
    raise OptionError(
        f"unknown architecture {text!r}: use 'unet', 'smp.<Arch>:<encoder>' (e.g. smp.Unet:resnet34) "
        "or 'classifier:<encoder>'"
    )
