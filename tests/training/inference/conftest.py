"""Fixtures of the inference tests: the gray tiny U-Net the predictor and blending tests share."""

from __future__ import annotations

import pytest

from tests.support.bundles import TINY_UNET, make_bundle
from training.bundle import Bundle


@pytest.fixture(scope="module")
def gray() -> Bundle:
    """The tiny U-Net (1 channel, classes ``c0`` and ``c1``), in memory, its head centred on noise
    so that both classes occur."""
    return make_bundle(TINY_UNET, probe="noise", each_class=True)
