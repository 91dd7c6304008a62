"""Helpers shared by the batch-job tests: a tiny bundle, image folders, and output trees as bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import TINY_UNET, randomise_batchnorm
from training.bundle import new_bundle_info, save_bundle
from training.models import build_model
from training.normalization import Normalization
from training.io.writers import encode_png

#: A valid tile of the tiny U-Net (margin 20, stride 4): output step 52 px, so small images
#: still span several tiles and chunks.
TILE = 92
#: Files of DST that are bookkeeping, not outputs (compared separately).
BOOKKEEPING = ("manifest.jsonl", ".tessera-batch.lock")



def make_bundle(path: Path, seed: int = 0) -> Path:
    """A tiny valid-padded U-Net bundle (1 channel, 2 classes), random but fixed weights, its
    last bias shifted so that it predicts both classes on :func:`smooth_image` pixels."""
    torch.manual_seed(seed)
    model = randomise_batchnorm(build_model(TINY_UNET), seed).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    pixels = torch.from_numpy(smooth_image(TILE, TILE, seed).astype(np.float32) / 255.0)
    with torch.no_grad():
        logits = model(((pixels - pixels.mean()) / pixels.std())[None, None])[0]
        head.bias[1] -= float((logits[1] - logits[0]).median())
    return save_bundle(path, model, new_bundle_info(TINY_UNET, model, ["background", "cell"], Normalization()))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 blobs (not noise), so the random model predicts both classes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 30)
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image += rng.normal(0, 0.05, image.shape)
    return np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)


def make_folder(root: Path, count: int, size: tuple[int, int] = (70, 90)) -> dict[str, np.ndarray]:
    """``count`` PNG/TIFF images under ``root`` (some in a sub-folder); name -> pixels."""
    images = {}
    for i in range(count):
        pixels = smooth_image(size[0] + 3 * i, size[1] + 5 * i, i)
        name = f"sub/img{i:03d}.tif" if i % 4 == 3 else f"img{i:03d}.png"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".tif"):
            tifffile.imwrite(path, pixels)
        else:
            path.write_bytes(encode_png(pixels))
        images[name] = pixels
    return images


def make_slide(path: Path, height: int, width: int, seed: int = 7) -> np.ndarray:
    """A tiled TIFF 'slide' (read lazily by the job)."""
    pixels = smooth_image(height, width, seed)
    tifffile.imwrite(path, pixels, tile=(64, 64))
    return pixels


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (bookkeeping excluded) as relative path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in BOOKKEEPING
    }


def leftovers(root: Path) -> list[str]:
    """Temporary files or unfinished outputs left under ``root``."""
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".tessera-done" in p.parts]


@pytest.fixture(scope="module")
def local2(bundle: Path):
    """``--scheduler local:2``: one LocalCluster of 2 worker processes for a test module, on the
    module's own ``bundle`` fixture; yields ``(spec, predictor, runner)``."""
    from service.batch import prepare
    from service.batch.scheduler import open_runner

    spec, predictor = prepare(bundle, tile=TILE, device="cpu")
    runner = open_runner("local:2", spec, predictor)
    yield spec, predictor, runner
    runner.close()
