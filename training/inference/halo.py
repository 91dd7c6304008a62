"""The halo of a same-padded network, measured from agreement with the whole-image pass.

A same-padded network (segmentation-models-pytorch) sees the whole image in a whole-image pass,
so tiles can only approximate it: a tile's kept pixels lie ``halo`` pixels or more from its
window's edge, and the further they are, the closer their labels come to the whole pass. The halo
a user needs is the smallest one whose tiled labels equal the whole-image labels on all but a
stated share of the pixels. :func:`scan_halos` measures exactly that on a trained model and real
images: for halos on the stride grid (``stride, 2 stride, ...``) it runs the tiled predictor at
each tile size the bundle will use and compares its labels with the whole-image pass of the same
predictor (same mirror padding, so only the seams differ). The agreement of a halo is the worst
over those tile sizes (smaller tiles put more pixels near a seam), pixel-weighted over images.

Presets (:data:`HALO_PRESETS`): ``default`` (labels equal on all but 0.1% of the pixels) and
``exact`` (all but 1e-4). The chosen halo of a preset is the first halo of the ascending scan
whose agreement reaches it; the scan records the agreement of every halo it ran, so an override
(``--halo N``) can say what it costs. The impulse-response radius
(:func:`training.models.measure_halo`) stays the halo of bundles measured without images.

Images smaller than two tiles have no seam inside: :func:`mosaic` lays several images side by
side into one larger image (real texture, the same pixels) for the scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from training.bundle import Bundle
from training.errors import OptionError
from training.inference.halo_record import HALO_PRESETS, HaloScan, preset_target, with_scan
from training.inference.predictor import Predictor

#: Tile input sizes the scan runs (pixels per side): the sizes the image-aware choice picks from
#: on a CPU (larger tiles keep their pixels further from a seam, so they agree at least as well).
SCAN_TILES = (512, 768)
#: Largest halo the scan tries, in strides (32 px strides: up to 256 px, the impulse radius of a
#: random Unet-resnet34).
SCAN_MAX_STRIDES = 8
#: Edge of the mosaics :func:`mosaic` builds for the scan (pixels): two 512 px tiles and more per side.
SCAN_MOSAIC = 1024


def mosaic(images: Sequence[np.ndarray], size: int = SCAN_MOSAIC, count: int = 1) -> list[np.ndarray]:
    """``count`` images of ``size x size`` pixels, each laid out from ``images`` row by row (cycled,
    then cropped): enough room for several tiles and their seams."""
    if not images:
        raise OptionError("the halo scan needs at least one image")
    height, width = images[0].shape[:2]
    per_side = -(-size // min(height, width))
    laid: list[np.ndarray] = []
    for k in range(count):
        pick = [images[(k * per_side**2 + i) % len(images)] for i in range(per_side**2)]
        crops = [p[:height, :width] for p in pick]
        if any(c.shape[:2] != (height, width) for c in crops):
            raise OptionError("mosaic images must all be at least as large as the first one")
        rows = [np.concatenate(crops[r * per_side : (r + 1) * per_side], 1) for r in range(per_side)]
        laid.append(np.ascontiguousarray(np.concatenate(rows, 0)[:size, :size]))
    return laid


def with_halo(bundle: Bundle, halo: int) -> Bundle:
    """The same model with its geometry's halo set to ``halo`` pixels (weights shared)."""
    geometry = dataclasses.replace(bundle.info.geometry, halo=int(halo))
    return Bundle(model=bundle.model, info=dataclasses.replace(bundle.info, geometry=geometry), path=bundle.path)


def halo_agreement(bundle: Bundle, images: Sequence[np.ndarray], halo: int, tile: int, device: str | torch.device = "cpu") -> tuple[float, int]:
    """Share of labels of the tiled pass (``tile``, ``halo``) equal to the whole-image pass of the
    same predictor, over ``images``; and the number of pixels compared."""
    predictor = Predictor(with_halo(bundle, halo), device=device, tile=tile, threshold="bundle")
    equal = total = 0
    for image in images:
        tiled = predictor.predict(image).labels
        whole = predictor.predict_whole(image, probabilities=False).labels
        equal += int((tiled == whole).sum())
        total += tiled.size
    return equal / total, total


def scan_tiles(bundle: Bundle, tiles: Sequence[int] = SCAN_TILES) -> list[int]:
    """The valid tile sizes nearest to ``tiles`` for this bundle's network (ascending, unique)."""
    geometry = bundle.info.geometry
    return sorted({geometry.input_size_for(max(t - 2 * geometry.margin, 1)) for t in tiles})


def scan_halos(
    bundle: Bundle,
    images: Sequence[np.ndarray],
    tiles: Sequence[int] = SCAN_TILES,
    presets: Sequence[str] = tuple(HALO_PRESETS),
    max_halo: int | None = None,
    device: str | torch.device = "cpu",
) -> HaloScan:
    """Measure the smallest halo on the stride grid reaching each preset's agreement.

    Halos ``stride, 2 stride, ...`` up to ``max_halo`` (default :data:`SCAN_MAX_STRIDES` strides,
    never so large that a tile keeps less than one stride) are run in ascending order at every
    size in ``tiles`` until the strictest preset is reached. A preset never reached gets the best
    halo measured with ``"reached": False``.
    """
    geometry = bundle.info.geometry
    if geometry is None or geometry.padding != "same":
        raise OptionError("the halo is measured for same-padded networks; a valid U-Net's halo is its margin")
    sizes = scan_tiles(bundle, tiles)
    stride = geometry.stride
    ceiling = max_halo or SCAN_MAX_STRIDES * stride
    ceiling = min(ceiling, (min(sizes) - stride) // 2 // stride * stride)
    targets = {name: preset_target(name) for name in presets}
    agreement: dict[int, float] = {}
    pixels = 0
    for halo in range(stride, ceiling + 1, stride):
        runs = [halo_agreement(bundle, images, halo, size, device) for size in sizes]
        agreement[halo] = min(a for a, _ in runs)
        pixels = runs[0][1]
        if agreement[halo] >= max(targets.values()):
            break
    if not agreement:
        raise OptionError(f"tiles {sizes} are too small for any halo on the {stride} px grid")
    scan = HaloScan(agreement=agreement, tiles=sizes, pixels=pixels)
    for name, target in targets.items():
        reached = [h for h, a in agreement.items() if a >= target]
        halo = reached[0] if reached else max(agreement, key=lambda h: (agreement[h], -h))
        scan.presets[name] = {"halo": halo, "agreement": agreement[halo], "target": target, "reached": bool(reached)}
    return scan


def measure_bundle_halo(
    bundle: Bundle,
    images: Sequence[np.ndarray],
    tiles: Sequence[int] = SCAN_TILES,
    device: str | torch.device = "cpu",
) -> Bundle:
    """The bundle with its halo scanned on ``images`` (laid into :data:`SCAN_MOSAIC` mosaics when
    smaller than that) and stored: see :func:`scan_halos` and :func:`with_scan`."""
    if min(min(i.shape[:2]) for i in images) < SCAN_MOSAIC:
        images = mosaic(images, SCAN_MOSAIC)
    scan = scan_halos(bundle, images, tiles=tiles, device=device)
    return Bundle(model=bundle.model, info=with_scan(bundle.info, scan), path=bundle.path)
