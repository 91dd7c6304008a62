"""Training data: datasets on disk, overlap-tile patches, augmentation.

* :mod:`training.data.dataset` -- folders of images and masks paired by stem, label specs, splits.
* :mod:`training.data.selection` -- which pairs a split uses: stems, stem ranges, positions.
* :mod:`training.data.patches` -- the torch ``Dataset`` of mirror-extrapolated training patches.
* :mod:`training.data.augment_config` -- the augmentation settings and their defaults.
* :mod:`training.data.augment` -- the albumentations pipeline (paper's elastic grid deformation,
  flips, rotations, intensity).

Seeding (DataLoader workers included) is :mod:`training.loop.seeding`.
"""

from training.lazy import lazy_attributes

#: Public name -> the module that defines it (imported on first use: inference uses a few of
#: these modules and must not load albumentations with them).
_EXPORTS: dict[str, str] = {
    "Augmentation": "training.data.augment",
    "build_augmentation": "training.data.augment",
    "IGNORE_INDEX": "training.data.dataset",
    "ISBI_HOLDOUT": "training.data.dataset",
    "ISBI_TRAIN": "training.data.dataset",
    "DatasetError": "training.data.dataset",
    "Example": "training.data.dataset",
    "LabelSpec": "training.data.dataset",
    "SegmentationFolder": "training.data.dataset",
    "isbi2012": "training.data.dataset",
    "PatchDataset": "training.data.patches",
    "WeightMapConfig": "training.data.patches",
    "dataset_normalization": "training.data.patches",
    "SelectionError": "training.data.selection",
    "parse_positions": "training.data.selection",
}


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
__all__ = sorted(_EXPORTS)
