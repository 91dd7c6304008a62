"""Bundles to export in the export tests: the shipped model, a width-8 valid U-Net, an smp
Unet-resnet18 and a resnet18 classifier, each exported once (ONNX and .pt2) per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.support.bundles import make_bundle, randomise_batchnorm
from tests.support.paths import ISBI
from training.bundle import DEFAULT_BUNDLE, Bundle, BundleInfo, load_bundle, save_bundle
from training.export.metadata import size_rule
from training.export.onnx import export_onnx
from training.export.program import capture, export_program
from training.geometry import TileGeometry
from training.io.images import read_image
from training.models import build_model
from training.normalization import Normalization

UNET8 = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 3, "width": 8, "padding": "valid"}
SMP18 = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 1, "num_classes": 2}
CLASSIFIER = {"arch": "classifier", "encoder": "resnet18", "in_channels": 1, "num_classes": 3}
#: The classifier's image size (its bundle's tile.input).
CLASSIFIER_SIZE = 64
#: A halo for the smp model (export does not use it; measuring it costs two 512² passes).
SMP_HALO = 64


@dataclass
class Exported:
    """A bundle (saved, reloaded) and its two exports."""

    bundle: Bundle
    onnx: Path
    program: Path


def build_bundle(name: str, folder: Path) -> Bundle:
    """The bundle ``name`` (``shipped``, ``unet8``, ``smp18``, ``classifier``), saved under
    ``folder`` and loaded back (so its ``path`` is a real file)."""
    if name == "shipped":
        return load_bundle(DEFAULT_BUNDLE)
    if name == "unet8":
        bundle = make_bundle(UNET8, probe="noise", each_class=True)  # head bias centred: both classes occur in its labels
        return load_bundle(save_bundle(folder / f"{name}.safetensors", bundle.model, bundle.info))
    torch.manual_seed(0)
    spec = {"smp18": SMP18, "classifier": CLASSIFIER}[name]
    model = randomise_batchnorm(build_model(spec)).eval()
    classes = [f"c{i}" for i in range(spec["num_classes"])]
    if name == "smp18":
        geometry = TileGeometry(padding="same", depth=5, halo=SMP_HALO, kind="stride")
        info = BundleInfo(spec=spec, classes=classes, in_channels=1, geometry=geometry, tile={"input": 256})
    else:
        info = BundleInfo(spec=spec, classes=classes, in_channels=1, task="classification",
                          tile={"input": CLASSIFIER_SIZE})
    return load_bundle(save_bundle(folder / f"{name}.safetensors", model, info))


def export_both(bundle: Bundle, folder: Path) -> Exported:
    """One capture, written as ONNX and as ``.pt2``."""
    stem = Path(bundle.path).stem
    program = capture(bundle)
    onnx = export_onnx(bundle, folder / f"{stem}.onnx", program=program)
    pt2 = export_program(bundle, folder / f"{stem}.pt2", program=program)
    return Exported(bundle=bundle, onnx=onnx, program=pt2)


def parity_sizes(info: BundleInfo) -> list[tuple[int, int, int]]:
    """Two (batch, height, width) inputs of valid sizes: a non-square one and a larger square one
    (a classifier takes one size: two batch sizes instead)."""
    rule = size_rule(info)
    if rule.step == 0:
        return [(2, rule.min, rule.min), (3, rule.min, rule.min)]
    return [(2, rule.min + rule.step, rule.min + 3 * rule.step), (1, rule.min + 4 * rule.step, rule.min + 4 * rule.step)]


def random_input(shape: tuple[int, int, int], channels: int, seed: int = 0) -> torch.Tensor:
    """A standard-normal batch ``(N, C, H, W)`` (what normalised pixels look like)."""
    batch, height, width = shape
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def real_input(shape: tuple[int, int, int]) -> torch.Tensor:
    """Crops of ISBI slice 25, normalised as the predictor does (whole-slice statistics)."""
    batch, height, width = shape
    pixels = read_image(ISBI / "image" / "25.png")
    mean, std = Normalization().statistics(pixels)
    crops = [pixels[20 * i : 20 * i + height, 30 * i : 30 * i + width] for i in range(batch)]
    return torch.from_numpy(np.stack([Normalization.apply(c, mean, std) for c in crops]))
