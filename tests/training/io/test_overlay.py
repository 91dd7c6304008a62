"""Overlays tint the classes a person looks for: the bundle's ``overlay_classes``, else every
class not named ``background``; every other pixel stays the image's gray."""

from __future__ import annotations

import numpy as np
import pytest

from training.bundle import DEFAULT_BUNDLE, BundleInfo, read_bundle_info
from training.io.overlay import PALETTE, display_gray, foreground_classes, overlay

RNG = np.random.default_rng(3)


def info(classes: list[str], overlay_classes: list[int] | None = None) -> BundleInfo:
    return BundleInfo(spec={}, classes=classes, in_channels=1, overlay_classes=overlay_classes)


def test_foreground_is_every_class_but_background() -> None:
    assert foreground_classes(info(["background", "nucleus", "membrane"])) == [1, 2]
    assert foreground_classes(info(["cell", "Background"])) == [0]
    assert foreground_classes(info(["background", "cell"], overlay_classes=[0, 1])) == [0, 1]


def test_the_shipped_model_tints_its_membranes() -> None:
    shipped = read_bundle_info(DEFAULT_BUNDLE)
    assert shipped.classes[0] == "membrane" and foreground_classes(shipped) == [0]


def test_overlay_classes_are_checked() -> None:
    data = {**info(["a", "b"]).to_dict(), "overlay_classes": [2]}
    with pytest.raises(ValueError, match="overlay_classes"):
        BundleInfo.from_dict(data)
    assert BundleInfo.from_dict({**data, "overlay_classes": [1]}).overlay_classes == [1]


@pytest.mark.parametrize("foreground", [[0], [1], [0, 1]])
def test_only_foreground_pixels_change(foreground: list[int]) -> None:
    image = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    labels = (RNG.random((40, 50)) > 0.5).astype(np.uint8)
    drawn = overlay(image, labels, foreground)
    gray = np.repeat(display_gray(image)[..., None], 3, axis=-1)
    kept = ~np.isin(labels, foreground)
    np.testing.assert_array_equal(drawn[kept], gray[kept])
    tinted = np.isin(labels, foreground)
    assert (drawn[tinted] != gray[tinted]).any(axis=-1).mean() > 0.9
    solid = overlay(image, np.full_like(labels, foreground[0]), foreground, alpha=1.0)
    assert (solid == PALETTE[foreground[0]]).all()
