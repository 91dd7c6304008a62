"""Shared fixtures: small models and bundles that build in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.bundle import new_bundle_info, save_bundle
from training.models import build_model
from training.normalization import Normalization
from tests.service_support import service_bundle, service_url  # noqa: F401  (one real server per session)

ASSETS = Path(__file__).resolve().parents[1] / "training" / "assets"
ISBI = ASSETS / "isbi2012"

#: A classic U-Net small enough for exactness and I/O tests (margin 12 px at depth 2).
TINY_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid"}


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running statistics so eval-mode tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model



@pytest.fixture(scope="module")
def one_thread():
    """One PyTorch intra-op thread for a test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on a shared 2-core machine two threads of a tiny
    model spend most of their time waiting for each other (measured: up to 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A saved tiny valid-padded U-Net bundle (1 channel, 2 classes)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(TINY_UNET)).eval()
    info = new_bundle_info(TINY_UNET, model, ["background", "foreground"], Normalization())
    return save_bundle(tmp_path / "tiny.safetensors", model, info)


@pytest.fixture
def isbi_slice() -> np.ndarray:
    """ISBI 2012 training slice 25 (a hold-out slice), 512x512 uint8."""
    from training.io.images import read_image

    return read_image(ISBI / "image" / "25.png")
