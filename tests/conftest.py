"""Fixtures shared across the suite: one PyTorch thread, a saved tiny bundle, an ISBI slice.
Helpers that are not fixtures live in :mod:`tests.support`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.bundles import make_bundle
from tests.support.images import isbi_slice as read_isbi_slice


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
    return make_bundle(path=tmp_path / "tiny.safetensors", classes=["background", "foreground"]).path


@pytest.fixture
def isbi_slice() -> np.ndarray:
    """ISBI 2012 training slice 25 (a hold-out slice), 512x512 uint8."""
    return read_isbi_slice(25)
