"""What the trainer optimises: the network, its optimizer, learning-rate schedule and loss scaler.

* :func:`build_network` -- the classic U-Net or any smp architecture/encoder
  (:func:`training.models.parse_arch`), its encoder optionally started from a local file (a
  torchvision/timm state dict or one of our classifier bundles); or, with ``model.init``, a
  segmentation bundle's network and weights (:func:`network_from_bundle`, fine-tuning).
* :func:`set_encoder_frozen` -- freezing means no gradient *and* BatchNorm statistics kept (Keras'
  ``trainable = False``); the trainer freezes for the first ``model.freeze_encoder_epochs`` epochs.
* :func:`build_optimizer`, :func:`scheduled_lr` -- Adam or SGD (Nesterov momentum), the learning
  rate constant or poly ``lr * (1 - progress) ** poly_power``.
* :func:`grad_scaler` -- loss scaling where autocast runs in float16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.bundle import bundle_path, file_sha256, load_bundle, read_bundle_info
from training.device import autocast_dtype
from training.loop.config import ConfigError, OptimConfig, TrainConfig
from training.models import build_model, load_encoder_weights, parse_arch


def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """The contracting path: an smp model's ``encoder``; the classic U-Net's stem and down blocks."""
    if hasattr(model, "encoder"):
        return [model.encoder]
    if hasattr(model, "stem") and hasattr(model, "down"):
        return [model.stem, *model.down]
    raise ConfigError(f"{type(model).__name__} has no encoder to freeze")


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm in eval mode) or unfreeze the encoder."""
    for module in encoder_modules(model):
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)
        module.train(not frozen and model.training)


def build_network(
    config: TrainConfig, in_channels: int, num_classes: int, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], nn.Module]:
    """The spec and the network of ``config.model``: freshly initialised (encoder weights loaded),
    or with ``model.init`` a bundle's network and weights (:func:`network_from_bundle`)."""
    m = config.model
    if m.init:
        path = bundle_path(m.init)
        spec, model, fresh = network_from_bundle(path, in_channels, num_classes)
        restarted = f"; {len(fresh)} tensors of the output layer start fresh ({num_classes} classes)" if fresh else ""
        log(f"model.init: the network and weights of {path}{restarted}")
        return spec, model
    options = {"depth": m.depth, "width": m.width, "padding": m.padding, "norm": m.norm, "dropout": m.dropout}
    if m.arch != "unet":
        options = {}
    spec = parse_arch(m.arch, in_channels, num_classes, **options)
    if spec["arch"] == "classifier":
        raise ConfigError(f"model.arch: {m.arch!r} is a classifier; use 'tessera train-classifier'")
    model = build_model(spec)
    if m.encoder_weights:
        if spec["arch"] != "smp":
            raise ConfigError("model.encoder_weights: only smp architectures have a pretrained encoder")
        path = Path(m.encoder_weights)
        if path.suffix == ".safetensors":
            _check_encoder_bundle(path, spec)
        load_encoder_weights(model.encoder, path)
    return spec, model


def network_from_bundle(path: Path, in_channels: int, num_classes: int) -> tuple[dict[str, Any], nn.Module, list[str]]:
    """Fine-tuning: the network a segmentation bundle describes, with its weights.

    The architecture is the bundle's whatever ``model.arch``/``depth``/``width`` say. With another
    number of classes, the tensors whose shape depends on it (the output layer) keep their fresh
    initialisation; their names are returned. Other input channels are an error.
    """
    bundle = load_bundle(path)
    info = bundle.info
    if info.task != "segmentation":
        raise ConfigError(f"model.init: {path} is a {info.task} bundle; an encoder goes in model.encoder_weights")
    if info.in_channels != in_channels:
        raise ConfigError(f"model.init: {path} takes {info.in_channels}-channel images, the training images have {in_channels}")
    spec = {**info.spec, "num_classes": num_classes}
    model = build_model(spec)
    given = bundle.model.state_dict()
    fresh = [key for key, tensor in model.state_dict().items() if given[key].shape != tensor.shape]
    model.load_state_dict({key: tensor for key, tensor in given.items() if key not in fresh}, strict=False)
    return spec, model, fresh


def init_source(name: str) -> dict[str, str]:
    """Which file ``model.init`` names, and its SHA-256: a bundle's identity even if it is later
    overwritten (``tessera calibrate`` can rewrite one in place)."""
    path = bundle_path(name)
    return {"from": str(path.resolve()), "sha256": file_sha256(path)}


def _check_encoder_bundle(path: Path, spec: dict[str, Any]) -> None:
    """A classifier bundle must have been trained with the same encoder (clear error otherwise)."""
    try:
        info = read_bundle_info(path)
    except ValueError:
        return  # a plain safetensors state dict, not a bundle: load_encoder_weights checks it
    encoder = info.spec.get("encoder")
    if encoder and encoder != spec.get("encoder"):
        raise ConfigError(f"model.encoder_weights: {path} holds a {encoder!r} encoder, the model uses {spec['encoder']!r}")


def build_optimizer(optim: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum, over all of ``model``'s parameters (frozen ones included:
    they simply get no gradient while frozen)."""
    parameters = model.parameters()
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, nesterov=True, weight_decay=optim.weight_decay)


def scheduled_lr(optim: OptimConfig, progress: float) -> float:
    """The learning rate at ``progress`` (0..1 of the run): constant, or poly
    ``lr * (1 - progress) ** poly_power`` (nnU-Net's)."""
    if optim.schedule == "constant":
        return optim.lr
    return optim.lr * (1 - progress) ** optim.poly_power


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only where autocast runs in float16 (bf16 and float32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=autocast_dtype(device, precision) == torch.float16)
