"""The inference options: one object that every way in builds and the predictor takes.

    options = InferenceOptions(tile=572, tta="flips", blend="gaussian", threshold=0.4)
    Predictor(bundle, options)                   # or Predictor(bundle, tile=572, tta="flips", ...)
    predictor.options                            # resolved: tile and batch size as numbers

``tessera predict``, ``tessera batch`` and ``tessera serve`` (its query parameters), the folder
and gigapixel jobs and their Dask workers all carry one :class:`InferenceOptions`; its fields are
checked here, once, when it is made. A batch job sends the predictor's *resolved* options to its
workers (``tile="auto"`` measured once, the batch size chosen once), so every worker builds an
identical predictor, and its resume key (:mod:`service.batch.jobkey`) is made from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from dataclasses import dataclass
from typing import Any

from training.device import PRECISIONS
from training.errors import OptionError
from training.inference.blending import (
    DEFAULT_OVERLAP,
    DEFAULT_SIGMA_SCALE,
    check_blend,
)
from training.inference.decision import check_threshold
from training.inference.tta import tta_mode

#: ``threshold`` value meaning the bundle's calibrated threshold (argmax if it has none).
BUNDLE_THRESHOLD = "bundle"
#: ``tile`` value meaning: measure the fastest valid size (:mod:`training.inference.autotile`).
AUTO_TILE = "auto"


@dataclass(frozen=True)
class InferenceOptions:
    """How a predictor runs a bundle. Every field is checked on creation (ValueError naming it).

    Attributes:
        tile: tile input size in pixels (a valid size for the network), ``None`` for the bundle's
            default, or ``"auto"`` to measure the fastest valid size.
        batch_size: tiles per forward pass (halved automatically on out-of-memory); ``None``: one
            on the CPU, eight on CUDA.
        tta: test-time augmentation, a :data:`~training.inference.tta.TTA_MODES` name (``True`` /
            ``False`` are accepted and stored as ``"d4"`` / ``"none"``).
        blend: ``"none"`` (exact crop-only stitching) or ``"gaussian"`` (overlapping tiles averaged
            with Gaussian weights; :mod:`training.inference.blending`).
        overlap: with ``blend="gaussian"``, the share of a tile's span its neighbour repeats.
        sigma_scale: with ``blend="gaussian"``, the Gaussian's sigma as a share of the span.
        threshold: two-class models: ``"bundle"`` (the bundle's calibrated threshold for this
            ``tta`` mode, argmax if it has none), ``None`` (argmax) or a probability in [0, 1].
        device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda:0"``...
        halo: same-padded networks: the context a tile reads beyond its output. ``None``: the
            bundle's (its measured ``default`` preset, else the impulse-response radius);
            ``"default"`` / ``"exact"``: the preset measured from agreement with the whole-image
            pass (:mod:`training.inference.halo`); a number of pixels overrides it (with a
            warning giving the measured agreement at that halo when the bundle has it).
        precision: ``"auto"`` (bf16/fp16 autocast on CUDA, float32 on the CPU), ``"float32"``
            (no autocast anywhere: tiles equal the whole pass to float round-off), ``"bfloat16"``,
            ``"float16"`` (CUDA) -- :func:`training.device.autocast_dtype`.
        tile_rates: the measured output pixels per second of each tile size (``tile="auto"``, and
            the default of same-padded networks): the tile is then chosen per image
            (:func:`training.inference.tilefit.fit_tile`). Measured by the predictor when None;
            its resolved options carry them, so workers choose the same tiles without measuring.
    """

    tile: int | str | None = None
    batch_size: int | None = None
    tta: str = "none"
    blend: str = "none"
    overlap: float = DEFAULT_OVERLAP
    sigma_scale: float = DEFAULT_SIGMA_SCALE
    threshold: float | str | None = BUNDLE_THRESHOLD
    device: str = "auto"
    halo: int | str | None = None
    precision: str = "auto"
    tile_rates: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self) -> None:
        check_blend(self.blend, self.overlap, self.sigma_scale)
        fields = {
            "tile": _check_tile(self.tile),
            "batch_size": _check_batch_size(self.batch_size),
            "tta": tta_mode(self.tta),
            "overlap": float(self.overlap),
            "sigma_scale": float(self.sigma_scale),
            "threshold": _check_threshold(self.threshold),
            "device": str(self.device),
            "halo": _check_halo(self.halo),
            "precision": _check_precision(self.precision),
            "tile_rates": _check_tile_rates(self.tile_rates),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def build(cls, options: InferenceOptions | None = None, **settings: Any) -> InferenceOptions:
        """``options`` (default: all defaults) with the given fields replaced: the keyword form
        the predictor and the batch jobs accept (``tile=572, tta="flips"``)."""
        base = options if options is not None else cls()
        return dataclasses.replace(base, **settings) if settings else base

    def replace(self, **settings: Any) -> InferenceOptions:
        """A copy with the given fields replaced (checked again)."""
        return dataclasses.replace(self, **settings)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short stable hash of every field (same options, same key, in any process)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def result_settings(self) -> dict[str, Any]:
        """The fields that decide the numbers a prediction returns: tile, TTA, blending and the
        threshold (batch size and device only decide how fast). Blending and the threshold are
        named only when not the defaults, so a key made from these matches the key of a job
        that never set them."""
        settings: dict[str, Any] = {"tile": self.tile, "tta": self.tta}
        if self.blend != "none":
            settings["blend"] = [self.blend, self.overlap]
            if self.sigma_scale != DEFAULT_SIGMA_SCALE:
                settings["sigma_scale"] = self.sigma_scale
        if self.threshold != BUNDLE_THRESHOLD:
            settings["threshold"] = self.threshold
        if self.halo is not None:
            settings["halo"] = self.halo
        if self.precision != "auto":
            settings["precision"] = self.precision
        return settings


def _check_tile(tile: int | str | None) -> int | str | None:
    """``None``, ``"auto"`` or a positive number of pixels (an int, or a string of digits);
    ValueError otherwise. Whether the size suits the network is the predictor's check."""
    if tile is None or tile == AUTO_TILE:
        return tile
    if isinstance(tile, str) and tile.strip().isdigit():
        tile = int(tile)
    if not isinstance(tile, numbers.Integral) or isinstance(tile, bool) or tile < 1:
        raise OptionError(f"tile must be a number of pixels or 'auto', not {tile!r}")
    return int(tile)


def _check_batch_size(batch_size: int | None) -> int | None:
    """``None`` or a whole number >= 1; OptionError otherwise."""
    if batch_size is None:
        return None
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, not {batch_size!r}")
    return int(batch_size)


def _check_threshold(threshold: float | str | None) -> float | str | None:
    """``"bundle"``, ``None`` or a probability in [0, 1] (a float); OptionError otherwise."""
    if threshold is None or threshold == BUNDLE_THRESHOLD:
        return threshold
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise OptionError(f"threshold must be 'bundle', None or a probability, not {threshold!r}") from None
    return check_threshold(value, 2)


#: ``halo`` names: the presets measured from agreement (:data:`training.inference.halo.HALO_PRESETS`).
HALO_NAMES = ("default", "exact")


def _check_halo(halo: int | str | None) -> int | str | None:
    """``None``, a preset name or a number of pixels >= 0; OptionError otherwise."""
    if halo is None or halo in HALO_NAMES:
        return halo
    if isinstance(halo, str) and halo.strip().isdigit():
        halo = int(halo)
    if not isinstance(halo, numbers.Integral) or isinstance(halo, bool) or halo < 0:
        raise OptionError(f"halo must be {' or '.join(HALO_NAMES)} or a number of pixels, not {halo!r}")
    return int(halo)


def _check_precision(precision: str) -> str:
    """A :data:`training.device.PRECISIONS` name; ValueError otherwise (whether the device can run
    it is the predictor's check)."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return str(precision)


def _check_tile_rates(rates: Any) -> tuple[tuple[int, float], ...] | None:
    """Measured tile throughput as sorted ``((size, output pixels per second), ...)`` from a dict or
    pairs (JSON gives lists); ValueError for sizes < 1 or rates <= 0."""
    if rates is None:
        return None
    pairs = rates.items() if isinstance(rates, dict) else rates
    try:
        checked = tuple(sorted((int(size), float(rate)) for size, rate in pairs))
    except (TypeError, ValueError):
        raise OptionError(f"tile_rates must map tile sizes to pixels per second, not {rates!r}") from None
    if not checked or any(size < 1 or rate <= 0 for size, rate in checked):
        raise OptionError(f"tile_rates must map tile sizes >= 1 to positive rates, not {rates!r}")
    return checked
