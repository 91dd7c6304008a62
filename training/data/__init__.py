"""Training data: datasets on disk, overlap-tile patches, augmentation.

* :mod:`training.data.dataset` -- folders of images and masks paired by stem, label specs, splits.
* :mod:`training.data.patches` -- the torch ``Dataset`` of mirror-extrapolated training patches.
* :mod:`training.data.augment` -- the albumentations pipeline (paper's elastic grid deformation,
  flips, rotations, intensity).

Seeding (DataLoader workers included) is :mod:`training.loop.seeding`.
"""

from training.data.dataset import (
    IGNORE_INDEX,
    ISBI_HOLDOUT,
    ISBI_TRAIN,
    DatasetError,
    Example,
    LabelSpec,
    SegmentationFolder,
    isbi2012,
    parse_selection,
)
from training.data.augment import Augmentation, build_augmentation
from training.data.patches import PatchDataset, WeightMapConfig, dataset_normalization

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
    "parse_selection",
]
