"""``tile="auto"``: measure the fastest valid tile size that fits the device's memory.

For valid tile sizes near :data:`AUTO_TILE_CANDIDATES` (pixels per side) whose batch of
activations fits a share of the free memory (:func:`memory_budget`, estimated with
:func:`activation_bytes_per_pixel`), :func:`choose_tile` times one batch each and keeps the size
with the most output pixels per second (the tile's step squared: halo pixels are not output).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
import torch

from training.geometry import InvalidSizeError

if TYPE_CHECKING:  # the predictor imports this module
    from training.inference.predictor import Predictor

#: Input sizes ``--tile auto`` tries (the nearest valid size to each), pixels per side.
AUTO_TILE_CANDIDATES = (256, 384, 512, 768, 1024, 1536)
#: Share of the available memory (host RAM, or free GPU memory) one batch's activations may use.
AUTO_TILE_MEMORY_SHARE = 0.25


@dataclass
class TileChoice:
    """What ``tile="auto"`` measured: the chosen size and output pixels per second per candidate."""

    size: int
    throughput: dict[int, float] = field(default_factory=dict)


def activation_bytes_per_pixel(predictor: Predictor, probe: int) -> float:
    """Bytes of layer outputs one input pixel costs in a forward pass, measured with hooks on a
    ``probe``-sized input (an upper bound of the peak: every intermediate counted)."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in predictor.model.modules() if not list(m.children())]
    try:
        predictor._forward(torch.zeros(1, predictor.info.in_channels, probe, probe))
    finally:
        for hook in hooks:
            hook.remove()
    return total / probe**2 / len(predictor.transforms)


def memory_budget(device: torch.device) -> int:
    """Bytes one batch may use: a share of the free GPU memory or of the available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * AUTO_TILE_MEMORY_SHARE)
    return int(psutil.virtual_memory().available * AUTO_TILE_MEMORY_SHARE)


def choose_tile(predictor: Predictor, budget: int | None = None, candidates=AUTO_TILE_CANDIDATES) -> TileChoice:
    """Measure output pixels per second (halo included) for valid tile sizes near ``candidates``
    whose batch fits ``budget`` bytes, and pick the fastest. One warm-up and one timed batch each."""
    geometry = predictor.geometry
    budget = budget or memory_budget(predictor.device)
    per_pixel = activation_bytes_per_pixel(predictor, geometry.input_size_for(2 * geometry.context + 4 * geometry.stride))
    sizes: list[int] = []
    for wanted in candidates:
        size = geometry.input_size_for(max(wanted - 2 * geometry.margin, 1))
        try:
            geometry.tile_step(size)
        except ValueError:
            continue
        if size not in sizes and (not sizes or size**2 * predictor.batch_size * per_pixel <= budget):
            sizes.append(size)
    throughput: dict[int, float] = {}
    for size in sizes:
        batch = torch.zeros(predictor.batch_size, predictor.info.in_channels, size, size)
        predictor._runner(batch)
        start = time.perf_counter()
        predictor._runner(batch)
        throughput[size] = predictor.batch_size * geometry.tile_step(size) ** 2 / (time.perf_counter() - start)
    if not throughput:
        raise InvalidSizeError("no valid tile size fits: the model's halo is too large for every candidate")
    return TileChoice(size=max(throughput, key=throughput.get), throughput=throughput)
