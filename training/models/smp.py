"""segmentation-models-pytorch architectures and encoders, built without any download.

smp's ``encoder_weights`` defaults to ``"imagenet"``, which downloads; Tessera always builds with
``encoder_weights=None`` and loads weights only from a local file (:func:`load_encoder_weights`):
a torchvision/timm state dict (``.pth``/``.pt`` read with ``weights_only=True``, or safetensors) or
a classifier bundle of our own (see :mod:`training.models.classifier`).

smp models use ``same`` padding; inputs must be multiples of ``2**encoder_depth`` (32 by default).
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from training.errors import OptionError
from training.geometry import TileGeometry
from training.models.weights import WeightsError, read_state_dict

#: Prefixes stripped from foreign state-dict keys (DataParallel, our bundles, timm wrappers).
KEY_PREFIXES = ("module.", "encoder.", "backbone.")


def build_smp(
    name: str = "Unet",
    encoder: str = "resnet34",
    in_channels: int = 3,
    num_classes: int = 2,
    encoder_depth: int = 5,
    **kwargs,
) -> nn.Module:
    """Build any smp architecture (``Unet``, ``FPN``, ``UnetPlusPlus``, ...) with random weights.

    Extra keyword arguments go to the smp constructor (e.g. ``decoder_channels``).
    """
    try:
        model = smp.create_model(
            name,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            encoder_depth=encoder_depth,
            **kwargs,
        )
    except (KeyError, ValueError) as error:
        raise OptionError(f"cannot build smp {name} with encoder {encoder!r}: {error}") from None
    model.geometry = TileGeometry(padding="same", depth=encoder_depth, halo=0, kind="stride")
    return model


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit a pretrained first-convolution kernel ``(out, c, k, k)`` to ``in_channels`` inputs:
    summed over colour for one channel, cycled and rescaled for more (smp's own rule)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return tiled * (weight.shape[1] / in_channels)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into an smp encoder; the file is never unpickled.

    Keys the encoder does not have (a classifier's ``fc``) are ignored; an encoder key the file
    lacks, or a shape that cannot be adapted, is an error naming the file.
    """
    state = read_state_dict(path)
    for prefix in KEY_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    own = encoder.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key not in state:
            continue
        value = state[key]
        if value.ndim == 4 and value.shape[1] != target.shape[1] and value.shape[0] == target.shape[0]:
            value = adapt_first_conv(value, target.shape[1])
        if value.shape != target.shape:
            raise WeightsError(
                f"{path}: weight {key!r} has shape {tuple(value.shape)}, the encoder needs "
                f"{tuple(target.shape)}"
            )
        matched[key] = value
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"{path}: not weights for this encoder: {len(missing)} of its tensors are missing "
            f"(first: {missing[0]!r})"
        )
    encoder.load_state_dict(matched, strict=False)
