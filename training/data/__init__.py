"""Training data: datasets on disk, overlap-tile patches, augmentation.

* :mod:`training.data.dataset` -- folders of images and masks paired by stem, label specs, splits.
* :mod:`training.data.selection` -- which pairs a split uses: stems, stem ranges, positions.
* :mod:`training.data.patches` -- the torch ``Dataset`` of mirror-extrapolated training patches.
* :mod:`training.data.augment` -- the albumentations pipeline (paper's elastic grid deformation,
  flips, rotations, intensity).

Seeding (DataLoader workers included) is :mod:`training.loop.seeding`.
"""

from training.data.augment import Augmentation, build_augmentation
from training.data.dataset import (
    IGNORE_INDEX,
    ISBI_HOLDOUT,
    ISBI_TRAIN,
    DatasetError,
    Example,
    LabelSpec,
    SegmentationFolder,
    isbi2012,
)
from training.data.patches import PatchDataset, WeightMapConfig, dataset_normalization
from training.data.selection import SelectionError, parse_positions

__all__ = [
    "Augmentation",
    "PatchDataset",
    "WeightMapConfig",
    "build_augmentation",
    "dataset_normalization",
    "IGNORE_INDEX",
    "ISBI_HOLDOUT",
    "ISBI_TRAIN",
    "DatasetError",
    "Example",
    "LabelSpec",
    "SegmentationFolder",
    "isbi2012",
    "SelectionError",
    "parse_positions",
]
