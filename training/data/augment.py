"""Data augmentation: one albumentations 2.0.8 pipeline applied jointly to image, mask and weight map.

Every geometric transform mirrors at borders (``cv2.BORDER_REFLECT_101``, the same mirror as
:mod:`training.mirror`; albumentations 2.0 defaults to a constant border) and moves labels and
weights with nearest-neighbour interpolation, so masks stay in their label set. The pipeline is
``Compose(strict=True)`` with the extra target ``weight`` (a mask).

Configuration: a dict (or a YAML file / string), one entry per transform; an entry is merged over
:data:`~training.data.augment_config.DEFAULT_AUGMENTATION`, ``False``/``None``/``p: 0`` turns a transform off, an unknown name or
option is an error. ``build_augmentation("none")`` is the identity.

==============  ==================================================================================
name            options (defaults in :data:`~training.data.augment_config.DEFAULT_AUGMENTATION`)
==============  ==================================================================================
``flip``        ``p``, ``axes``: horizontal and vertical flips (``axes`` "both"), or only one
                of them ("horizontal" / "vertical"), each with probability p
``rotate90``    ``p``: a random multiple of 90 degrees
``elastic``     ``p``, ``grid``, ``sigma``: the U-Net paper's deformation -- displacements on a
                coarse ``grid x grid`` (3 x 3) grid spanning the augmented window, drawn from
                N(0, sigma = 10 px), cubic-spline interpolated to every pixel
                (:class:`GridElastic`)
``affine``      ``p``, ``scale`` [lo, hi] (isotropic), ``rotate`` [lo, hi] degrees
``brightness``  ``p``, ``limit``: add U(-limit, limit) (images are scaled to [0, 1])
``contrast``    ``p``, ``limit``: multiply intensities by 1 + U(-limit, limit)
``gamma``       ``p``, ``range`` [lo, hi]: x ** gamma
``noise``       ``p``, ``std`` [lo, hi]: additive Gaussian noise
``blur``        ``p``, ``sigma`` [lo, hi]: Gaussian blur
==============  ==================================================================================

Flips and 90-degree rotations assume that labels are drawn centred on what they trace. Where a
dataset's labels sit off-centre by a fixed sub-pixel offset (ISBI 2012's: 0.6 px up, 0.2 px left),
flipped copies carry the opposite offset and teach the model a centred answer, wrong by that offset
along every edge. Give the offset (``label_offset``, ``data.label_offset`` in a training config)
and flips and turns keep it (:class:`OffsetDihedral`): labels are flipped and turned exactly, the
image is flipped, turned and moved back by the offset's change, resampled bilinearly. Or turn flips
off, or keep them to one axis with ``flip.axes``.

Why neither built-in elastic transform: ``ElasticTransform`` smooths a dense per-pixel random
field with a Gaussian (Simard 2003), not a coarse grid; ``GridElasticDeform`` draws uniform
displacements and warps each grid cell by a piecewise mesh (no smooth interpolation, no border mode).

Augment the *input* window (with the model's margin) so warps have real context: a window read
with :func:`warp_reach` extra mirrored pixels per side and cropped back after augmentation shows no
border artefacts; :mod:`training.data.patches` does exactly that.

Randomness: every transform draws from one stream, restarted by :meth:`Augmentation.reseed`.
albumentations 2.0.8 copies the same random state into every DataLoader worker;
:func:`training.loop.seeding.worker_init_fn` reseeds each worker's dataset (and so its pipeline).

Public API: :func:`build_augmentation` -> :class:`Augmentation` (``aug(image, mask, weight)``,
``reseed(seed)``, ``reach(size)``), :data:`~training.data.augment_config.DEFAULT_AUGMENTATION`, :func:`warp_reach`,
:class:`GridElastic`, :func:`grid_displacement`, :class:`OffsetDihedral`.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric.distortion import BaseDistortion
from scipy import ndimage

from training.data.augment_config import read_config
from training.data.label_offset import check_label_offset, dihedral_vector
from training.errors import OptionError

#: The one border mode for every warp: OpenCV's name for training.mirror's mirror.
BORDER = cv2.BORDER_REFLECT_101

#: ``flip.axes`` -> the albumentations flips it draws from.
FLIP_AXES = {
    "both": (A.HorizontalFlip, A.VerticalFlip),
    "horizontal": (A.HorizontalFlip,),
    "vertical": (A.VerticalFlip,),
}
#: Elastic displacements beyond this many sigma are treated as impossible when sizing the context.
ELASTIC_REACH_SIGMAS = 3.0


# --------------------------------------------------------------------------- the paper's elastic warp
@functools.lru_cache(maxsize=32)
def _cubic_basis(size: int, grid: int) -> np.ndarray:
    """``(size, grid)`` weights that interpolate ``grid`` equally spaced nodes (first and last on the
    first and last pixel) to ``size`` pixels with a cubic spline."""
    basis = np.empty((size, grid), np.float64)
    for node in range(grid):
        unit = np.zeros(grid)
        unit[node] = 1.0
        zoomed = ndimage.zoom(unit, size / grid, order=3, mode="mirror", grid_mode=False)
        basis[:, node] = zoomed[:size] if zoomed.size >= size else np.resize(zoomed, size)
    return basis.astype(np.float32)


def grid_displacement(shape: tuple[int, int], coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (dy, dx) float32 ``shape`` maps from coarse ``(grid, grid, 2)`` displacements."""
    rows, cols = _cubic_basis(shape[0], coarse.shape[0]), _cubic_basis(shape[1], coarse.shape[1])
    coarse = coarse.astype(np.float32)
    return (rows @ coarse[..., 0]) @ cols.T, (rows @ coarse[..., 1]) @ cols.T


class GridElastic(BaseDistortion):
    """The U-Net paper's elastic deformation: random displacements on a coarse ``grid x grid``
    grid, each from N(0, ``sigma`` px), cubic-interpolated to a smooth per-pixel field. Images are
    resampled bilinearly, masks with nearest neighbour, borders mirrored."""

    class InitSchema(BaseDistortion.InitSchema):
        grid: int
        sigma: float

    def __init__(
        self,
        grid: int = 3,
        sigma: float = 10.0,
        interpolation: int = cv2.INTER_LINEAR,
        mask_interpolation: int = cv2.INTER_NEAREST,
        keypoint_remapping_method: str = "mask",
        border_mode: int = BORDER,
        fill: float = 0,
        fill_mask: float = 0,
        p: float = 0.5,
    ) -> None:
        super().__init__(
            interpolation=interpolation,
            mask_interpolation=mask_interpolation,
            keypoint_remapping_method=keypoint_remapping_method,
            p=p,
            border_mode=border_mode,
            fill=fill,
            fill_mask=fill_mask,
        )
        if grid < 2 or sigma < 0:
            raise OptionError(f"elastic grid must be >= 2 and sigma >= 0, got grid {grid}, sigma {sigma}")
        self.grid = grid
        self.sigma = sigma

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        coarse = self.random_generator.normal(0.0, self.sigma, size=(self.grid, self.grid, 2))
        dy, dx = grid_displacement((height, width), coarse)
        dx += np.arange(width, dtype=np.float32)[None, :]
        dy += np.arange(height, dtype=np.float32)[:, None]
        return {"map_x": dx, "map_y": dy}


def check_flip_axes(axes: str) -> str:
    """``flip.axes`` itself when it names a :data:`FLIP_AXES` entry; ValueError otherwise."""
    if axes not in FLIP_AXES:
        raise OptionError(f"augmentation 'flip': axes must be one of {', '.join(FLIP_AXES)}, not {axes!r}")
    return axes


def _dihedral(array: np.ndarray, hflip: bool, vflip: bool, turns: int) -> np.ndarray:
    if hflip:
        array = array[:, ::-1]
    if vflip:
        array = array[::-1]
    return np.ascontiguousarray(np.rot90(array, turns))


class OffsetDihedral(A.DualTransform):
    """Flips and quarter turns that keep labels drawn ``label_offset = (dy, dx)`` pixels off the
    structures they trace (negative: up / left) exactly that far off.

    Flipping or turning image and labels together turns the offset too (a vertical flip moves
    labels drawn 0.6 px above to 0.6 px below). Labels and weights are flipped and turned exactly;
    the image is flipped, turned and then moved by ``t = D(offset) - offset`` (bilinear, mirrored
    border), so the labels sit ``offset`` from its structures again. Each axis flips with
    probability ``flip_p`` (``axes`` as in ``flip.axes``); with probability ``turn_p`` a random
    multiple of 90 degrees is applied (as ``RandomRotate90``).
    """

    class InitSchema(A.DualTransform.InitSchema):
        flip_p: float
        axes: str
        turn_p: float
        label_offset: tuple[float, float]

    def __init__(self, flip_p: float = 0.5, axes: str = "both", turn_p: float = 0.5,
                 label_offset: tuple[float, float] = (0.0, 0.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.flip_p, self.axes, self.turn_p = flip_p, check_flip_axes(axes), turn_p
        self.label_offset = (float(label_offset[0]), float(label_offset[1]))

    def get_params(self) -> dict[str, Any]:
        draw = self.py_random.random
        hflip = self.axes in ("both", "horizontal") and draw() < self.flip_p
        vflip = self.axes in ("both", "vertical") and draw() < self.flip_p
        turns = self.py_random.randint(0, 3) if draw() < self.turn_p else 0
        return {"hflip": hflip, "vflip": vflip, "turns": turns}

    def apply(self, img: np.ndarray, hflip: bool, vflip: bool, turns: int, **params: Any) -> np.ndarray:
        out = _dihedral(img, hflip, vflip, turns)
        ty, tx = np.subtract(dihedral_vector(self.label_offset, hflip, vflip, turns), self.label_offset)
        if ty == 0 and tx == 0:
            return out
        move = np.float32([[1, 0, tx], [0, 1, ty]])
        moved = cv2.warpAffine(out, move, (out.shape[1], out.shape[0]), flags=cv2.INTER_LINEAR, borderMode=BORDER)
        return moved.reshape(out.shape)

    def apply_to_mask(self, mask: np.ndarray, hflip: bool, vflip: bool, turns: int, **params: Any) -> np.ndarray:
        return _dihedral(mask, hflip, vflip, turns)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("flip_p", "axes", "turn_p", "label_offset")


# --------------------------------------------------------------------------- configuration
def _pair(values: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise OptionError(f"augmentation option {name!r} must be [low, high], got {values!r}") from None
    if hi < lo:
        raise OptionError(f"augmentation option {name!r}: [{lo}, {hi}] runs backwards")
    return lo, hi


def _transforms(config: dict[str, dict[str, Any]], label_offset: tuple[float, float] = (0.0, 0.0)) -> list[A.BasicTransform]:
    """albumentations transforms for an effective config, geometric first (flips and turns as
    one :class:`OffsetDihedral` when the labels sit off-centre)."""
    t: list[A.BasicTransform] = []
    c = config
    if any(label_offset) and ("flip" in c or "rotate90" in c):
        flip = c.get("flip", {"p": 0.0, "axes": "both"})
        t.append(OffsetDihedral(flip_p=flip["p"], axes=flip["axes"], turn_p=c.get("rotate90", {}).get("p", 0.0),
                                label_offset=label_offset))
        c = {name: options for name, options in c.items() if name not in ("flip", "rotate90")}
    if "flip" in c:
        t += [flip(p=c["flip"]["p"]) for flip in FLIP_AXES[check_flip_axes(c["flip"]["axes"])]]
    if "rotate90" in c:
        t.append(A.RandomRotate90(p=c["rotate90"]["p"]))
    if "affine" in c:
        t.append(
            A.Affine(
                scale=_pair(c["affine"]["scale"], "scale"),
                rotate=_pair(c["affine"]["rotate"], "rotate"),
                keep_ratio=True,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=BORDER,
                p=c["affine"]["p"],
            )
        )
    if "elastic" in c:
        e = c["elastic"]
        t.append(GridElastic(grid=int(e["grid"]), sigma=float(e["sigma"]), p=e["p"]))
    if "brightness" in c:
        limit = float(c["brightness"]["limit"])
        t.append(A.RandomBrightnessContrast(brightness_limit=(-limit, limit), contrast_limit=(0.0, 0.0),
                                            p=c["brightness"]["p"]))
    if "contrast" in c:
        limit = float(c["contrast"]["limit"])
        t.append(A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(-limit, limit),
                                            p=c["contrast"]["p"]))
    if "gamma" in c:
        lo, hi = _pair(c["gamma"]["range"], "range")
        t.append(A.RandomGamma(gamma_limit=(100 * lo, 100 * hi), p=c["gamma"]["p"]))
    if "noise" in c:
        t.append(A.GaussNoise(std_range=_pair(c["noise"]["std"], "std"), p=c["noise"]["p"]))
    if "blur" in c:
        t.append(A.GaussianBlur(blur_limit=0, sigma_limit=_pair(c["blur"]["sigma"], "sigma"), p=c["blur"]["p"]))
    return t


def warp_reach(config: dict[str, dict[str, Any]], size: int, label_offset: tuple[float, float] = (0.0, 0.0)) -> int:
    """Extra pixels per side a square window of ``size`` needs so that the configured warps pull
    their samples from real (globally mirrored) context rather than the window's own reflection."""
    reach = 0.0
    if "flip" in config or "rotate90" in config:  # OffsetDihedral moves the image by up to 2 offsets
        reach += 2 * max(abs(float(v)) for v in label_offset)
    if "affine" in config:
        lo_scale, _ = _pair(config["affine"]["scale"], "scale")
        lo_rot, hi_rot = _pair(config["affine"]["rotate"], "rotate")
        angles = np.radians(np.linspace(lo_rot, hi_rot, 33))
        spread = float(np.max(np.abs(np.cos(angles)) + np.abs(np.sin(angles))))
        reach += max(0.0, size / 2 * (spread / lo_scale - 1))
    if "elastic" in config:
        reach += ELASTIC_REACH_SIGMAS * float(config["elastic"]["sigma"])
    return int(math.ceil(reach))


class Augmentation:
    """A configured pipeline: ``aug(image, mask, weight)`` -> the three, transformed together.

    ``image``: ``(H, W)`` or ``(H, W, C)`` float32 in [0, 1]; ``mask``: ``(H, W)`` uint8/uint16
    labels; ``weight``: ``(H, W)`` float32 or None. Shapes are kept (square windows).
    """

    def __init__(self, config: Mapping | str | Path | None = None, seed: int | None = None,
                 label_offset: Sequence[float] = (0.0, 0.0)) -> None:
        self.config = read_config(config)
        self.label_offset = check_label_offset(label_offset)
        self.compose = A.Compose(_transforms(self.config, self.label_offset), additional_targets={"weight": "mask"},
                                 strict=True)
        self.reseed(seed if seed is not None else random.SystemRandom().randrange(2**32))

    def reseed(self, seed: int) -> None:
        """Restart every transform's random stream from ``seed`` (one shared stream)."""
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def reach(self, size: int) -> int:
        """See :func:`warp_reach`."""
        return warp_reach(self.config, size, self.label_offset)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if not self.config:
            return image, mask, weight
        data = {"image": image, "mask": mask}
        if weight is not None:
            data["weight"] = weight
        out = self.compose(**data)
        return out["image"], out["mask"], out.get("weight")


def build_augmentation(config: Mapping | str | Path | None = None, seed: int | None = None,
                       label_offset: Sequence[float] = (0.0, 0.0)) -> Augmentation:
    """The pipeline for ``config`` (None: :data:`~training.data.augment_config.DEFAULT_AUGMENTATION`; ``"none"``: identity);
    ``label_offset``: where the labels sit relative to what they trace, ``(dy, dx)`` pixels."""
    return Augmentation(config, seed, label_offset)
