"""Overlap-tile training samples (U-Net paper, section 2) as a torch ``Dataset``.

Each sample is an *output window* of ``output`` x ``output`` pixels anywhere in an image, borders
included, and the *input window* the network needs to predict it:

* valid padding (the paper's U-Net): the input window is the output window grown by the model's
  ``margin`` on every side (572 -> 388 for the paper's network);
* same padding (smp models, same-padded U-Nets): input and output window are the same crop.

Pixels outside the image are mirrored with :func:`training.mirror.mirror_window` -- the code the
tiler uses -- so training sees exactly the borders inference sees. Target pixels outside the image
(only when the image is smaller than the output window, or moved in by a warp) are ignored.

Pipeline per sample (all randomness from the dataset's own generator, see :meth:`reseed`):

1. pick an image uniformly; with probability ``foreground_share`` centre the output window on a
   random pixel of a foreground class (nnU-Net's oversampling; the window is then shifted to stay
   inside the image when the image is large enough), otherwise place it uniformly;
2. read image, labels and weight map over the input window plus the augmentation's
   :meth:`~training.data.augment.Augmentation.reach`, all through ``mirror_window``;
3. augment the three jointly, crop the reach off again (no artefacts from the warps' own borders);
4. normalise with the image's statistics, computed once per image at construction (never per
   patch) by :class:`training.normalization.Normalization`. (Float images whose values leave
   [0, 1] are stored mapped into it, statistics mapped alike: the input is the same, and
   intensity augmentations, which clip to [0, 1], see the whole range.)

Items: ``(input, target, weight)`` = float32 ``(C, Hin, Win)``, int64 ``(Hout, Wout)`` (class
indices, :data:`~training.data.dataset.IGNORE_INDEX` where ignored), float32 ``(Hout, Wout)``
(the paper's weight map, 0 where ignored; ones when disabled).

Public API: :class:`PatchDataset` (``len``, ``[i]``, ``reseed(seed)``, ``sample(image, y0, x0)``,
``input_size``/``output_size``), :class:`WeightMapConfig`, :data:`UNIFORM_WEIGHTS` (every
labelled pixel weighs 1), :func:`dataset_normalization` (``mode="fixed"`` from all images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.data.augment import Augmentation
from training.data.dataset import IGNORE_INDEX, DatasetError, Example
from training.data.weightmap import SIGMA, W0, class_balance_weights, unet_weight_map
from training.errors import OptionError
from training.geometry import TileGeometry
from training.mirror import mirror_window
from training.normalization import Normalization, image_statistics, scale_to_unit

#: Foreground pixels remembered per image for oversampling (a random subset when there are more).
MAX_FOREGROUND_PIXELS = 10_000
#: Share of samples centred on a foreground pixel by default (nnU-Net: one third).
FOREGROUND_SHARE = 1 / 3


@dataclass(frozen=True)
class WeightMapConfig:
    """Pixel weights: ``class_weights`` "balanced" (dataset-wide ``w_c``), "none" (all 1) or one
    weight per class; ``w0``/``sigma`` the paper's border term (``w0 = 0``: off);
    ``object_classes`` whose connected components are the objects (None: all but class 0)."""

    class_weights: str | tuple[float, ...] = "balanced"
    w0: float = W0
    sigma: float = SIGMA
    object_classes: tuple[int, ...] | None = None

    def resolve(self, targets: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
        """The per-class ``w_c`` for these targets."""
        if isinstance(self.class_weights, str):
            if self.class_weights == "balanced":
                return class_balance_weights(targets, num_classes)
            if self.class_weights == "none":
                return np.ones(num_classes)
            raise OptionError(f"class_weights must be 'balanced', 'none' or a list, not {self.class_weights!r}")
        if len(self.class_weights) != num_classes:
            raise OptionError(f"{len(self.class_weights)} class weights for {num_classes} classes")
        return np.asarray(self.class_weights, np.float64)


#: No weighting at all: every labelled pixel weighs 1.
UNIFORM_WEIGHTS = WeightMapConfig(class_weights="none", w0=0.0)


def dataset_normalization(examples: Sequence[Example]) -> Normalization:
    """``Normalization(mode="fixed")`` with the pooled per-channel mean and std of all images."""
    count, total, total_sq = 0, 0.0, 0.0
    for example in examples:
        mean, std = image_statistics(example.image)
        n = example.image.shape[0] * example.image.shape[1]
        count, total, total_sq = count + n, total + n * mean, total_sq + n * (std**2 + mean**2)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return Normalization("fixed", tuple(float(m) for m in mean), tuple(float(s) for s in std))


@dataclass
class _Prepared:
    """One image ready for sampling: unit-scaled pixels, label codes, weights, statistics."""

    name: str
    pixels: np.ndarray  # (H, W[, C]) float32 in [0, 1]
    codes: np.ndarray  # (H, W) uint8/uint16 class indices, ``ignore_code`` where ignored
    weight: np.ndarray  # (H, W) float32
    mean: np.ndarray
    std: np.ndarray
    foreground: np.ndarray  # flat indices of foreground pixels (subset)


class PatchDataset(torch.utils.data.Dataset):
    """Random overlap-tile samples from decoded examples (see the module docstring).

    Args:
        examples: decoded images and targets (:meth:`SegmentationFolder.load_all`), one channel count.
        geometry: the model's :class:`TileGeometry` (``model.geometry``).
        input_size: network input size (valid padding: e.g. 572 -> output 388; same: the crop).
        num_classes: number of classes of the targets.
        normalization: how pixels become input; ``mode="image"`` statistics are per image
            (None: ``Normalization()``, per-image statistics).
        augmentation: an :class:`Augmentation` or None.
        weights: :class:`WeightMapConfig` (default: the paper's map with balanced ``w_c``).
        foreground_classes: classes oversampling centres on (default: all but class 0).
        foreground_share: probability that a sample is centred on a foreground pixel.
        samples_per_epoch: ``len(dataset)``; default: enough output windows to cover every image
            pixel once on average.
        seed: seed of this dataset's generator (DataLoader workers reseed it through
            :func:`training.loop.seeding.worker_init_fn`).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        geometry: TileGeometry,
        input_size: int,
        num_classes: int,
        normalization: Normalization | None = None,
        augmentation: Augmentation | None = None,
        weights: WeightMapConfig = WeightMapConfig(),
        foreground_classes: Sequence[int] | None = None,
        foreground_share: float = FOREGROUND_SHARE,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        if not examples:
            raise DatasetError("no examples to sample patches from")
        if not 0.0 <= foreground_share <= 1.0:
            raise OptionError(f"foreground_share must be in [0, 1], not {foreground_share}")
        geometry.check_input(input_size)
        self.geometry = geometry
        self.input_size = input_size
        self.output_size = geometry.output_size(input_size)
        self.context = (input_size - self.output_size) // 2
        self.num_classes = num_classes
        self.normalization = Normalization() if normalization is None else normalization
        self.augmentation = augmentation
        self.reach = augmentation.reach(input_size) if augmentation is not None else 0
        self.foreground_share = foreground_share
        self.ignore_code = np.iinfo(np.uint8 if num_classes < 255 else np.uint16).max
        foreground = tuple(range(1, num_classes)) if foreground_classes is None else tuple(foreground_classes)
        self.class_weights = weights.resolve([e.target for e in examples], num_classes)
        generator = np.random.default_rng(seed)
        self.images = [self._prepare(e, weights, foreground, generator) for e in examples]
        if samples_per_epoch is None:
            area = sum(p.codes.size for p in self.images)
            samples_per_epoch = max(1, math.ceil(area / self.output_size**2))
        self.samples_per_epoch = samples_per_epoch
        self.reseed(seed)

    # ----------------------------------------------------------------- preparation (once per image)
    def _prepare(
        self, example: Example, weights: WeightMapConfig, foreground: tuple[int, ...], generator: np.random.Generator
    ) -> _Prepared:
        target = example.target
        if target.shape != example.image.shape[:2]:
            raise DatasetError(f"{example.name}: target {target.shape} does not match image {example.image.shape}")
        if target.max(initial=0) >= self.num_classes:
            raise DatasetError(f"{example.name}: target has class {target.max()} but there are {self.num_classes}")
        mean, std = self.normalization.statistics(example.image)
        codes = np.where(target == IGNORE_INDEX, self.ignore_code, target).astype(
            np.uint8 if self.ignore_code == 255 else np.uint16
        )
        if weights.w0 > 0 or not np.all(self.class_weights == 1):
            objects = None if weights.object_classes is None else tuple(weights.object_classes)
            weight = unet_weight_map(target, self.class_weights, objects, w0=weights.w0, sigma=weights.sigma)
        else:
            weight = (target != IGNORE_INDEX).astype(np.float32)
        flat = np.flatnonzero(np.isin(target, foreground))
        if flat.size > MAX_FOREGROUND_PIXELS:
            flat = np.sort(generator.choice(flat, MAX_FOREGROUND_PIXELS, replace=False))
        pixels, mean, std = _unit_range(scale_to_unit(example.image), mean, std)
        return _Prepared(example.name, pixels, codes, weight, mean, std, flat)

    # ----------------------------------------------------------------- sampling
    def reseed(self, seed: int) -> None:
        """Restart the sampling and augmentation streams from ``seed`` (called per worker)."""
        sampling, augmenting = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(sampling)
        if self.augmentation is not None:
            self.augmentation.reseed(int(augmenting.generate_state(1)[0]))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def window_start(self, image: _Prepared) -> tuple[int, int]:
        """Top-left corner (y, x) of a random output window in ``image`` (may be negative when the
        image is smaller than the window)."""
        height, width = image.codes.shape
        size = self.output_size
        low = (min(0, height - size), min(0, width - size))
        high = (max(0, height - size), max(0, width - size))
        if image.foreground.size and self.rng.random() < self.foreground_share:
            centre = int(self.rng.choice(image.foreground))
            cy, cx = divmod(centre, width)
            y0, x0 = cy - size // 2, cx - size // 2
            return int(np.clip(y0, low[0], high[0])), int(np.clip(x0, low[1], high[1]))
        return int(self.rng.integers(low[0], high[0] + 1)), int(self.rng.integers(low[1], high[1] + 1))

    def sample(self, image: _Prepared, y0: int, x0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training triple for the output window at ``(y0, x0)`` of ``image``."""
        reach = self.reach
        grow = self.context + reach
        y_read, x_read = y0 - grow, x0 - grow
        side = self.output_size + 2 * grow
        pixels = mirror_window(image.pixels, y_read, y_read + side, x_read, x_read + side)  # may be a view
        codes = mirror_window(image.codes, y_read, y_read + side, x_read, x_read + side).copy()
        weight = mirror_window(image.weight, y_read, y_read + side, x_read, x_read + side).copy()
        outside = _outside_mask(image.codes.shape, y_read, x_read, side)
        codes[outside] = self.ignore_code
        if self.augmentation is not None:
            pixels, codes, weight = self.augmentation(pixels.copy(), codes, weight)
        pixels = pixels[reach : side - reach, reach : side - reach]
        inner = slice(grow, grow + self.output_size)
        codes, weight = codes[inner, inner], weight[inner, inner]
        ignored = codes == self.ignore_code
        target = codes.astype(np.int64)
        target[ignored] = IGNORE_INDEX
        weight = np.where(ignored, np.float32(0), weight).astype(np.float32)
        network_input = Normalization.apply(pixels, image.mean, image.std)
        return torch.from_numpy(network_input), torch.from_numpy(target), torch.from_numpy(weight)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image = self.images[int(self.rng.integers(len(self.images)))]
        y0, x0 = self.window_start(image)
        return self.sample(image, y0, x0)


def _unit_range(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float images outside [0, 1] (intensity augmentations clip there) mapped affinely into it,
    with the statistics mapped alike so the network input is unchanged."""
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0.0 and high <= 1.0:
        return pixels, mean, std
    span = max(high - low, np.finfo(np.float32).tiny)
    unit = ((pixels - np.float32(low)) / np.float32(span)).astype(np.float32)
    return unit, (np.asarray(mean) - low) / span, np.asarray(std) / span


def _outside_mask(shape: tuple[int, int], y0: int, x0: int, side: int) -> np.ndarray:
    """True for window pixels (window at ``(y0, x0)``, ``side`` square) outside an image of ``shape``."""
    rows = np.arange(y0, y0 + side)
    cols = np.arange(x0, x0 + side)
    inside_rows = (rows >= 0) & (rows < shape[0])
    inside_cols = (cols >= 0) & (cols < shape[1])
    return ~(inside_rows[:, None] & inside_cols[None, :])
