"""Inputs and outputs of the batch jobs: the tile the tests run, image folders, tiled TIFF
slides, and output trees as bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from tests.support.images import smooth_image
from training.io.writers import encode_png

#: A valid tile of the tiny U-Net (margin 20, stride 4): output step 52 px, so small images
#: still span several tiles and chunks.
TILE = 92
#: Files of DST that are bookkeeping, not outputs (compared separately).
BOOKKEEPING = ("manifest.jsonl", ".tessera-batch.lock")
#: Class names of the batch tests' bundle.
CLASSES = ["background", "cell"]


def blob_probe(seed: int = 0) -> torch.Tensor:
    """A :func:`smooth_image` tile, scaled to [0, 1] and standardised, as a ``(1, 1, TILE, TILE)``
    probe for :func:`tests.support.bundles.tiny_bundle`: the batch bundle predicts both classes
    on these images."""
    pixels = torch.from_numpy(smooth_image(TILE, TILE, seed).astype(np.float32) / 255.0)
    return ((pixels - pixels.mean()) / pixels.std())[None, None]


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
