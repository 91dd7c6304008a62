"""The images a training run learns from and validates on, and the patches it trains on.

:func:`load_splits` reads ``config.data``: the training folders paired by stem
(:class:`training.data.dataset.SegmentationFolder`), narrowed by ``data.train``, with the validation
pairs either picked from them by ``data.val`` or read from ``data.val_images``/``data.val_masks``
(selections: :mod:`training.data.selection`). :func:`training_patches` draws the training samples:
mirror-extrapolated overlap-tile patches (:mod:`training.data.patches`) with the paper's weight
map and the albumentations pipeline (:mod:`training.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from training.data.augment import build_augmentation
from training.data.dataset import DatasetError, Example, LabelSpec, SegmentationFolder
from training.data.patches import (
    UNIFORM_WEIGHTS,
    PatchDataset,
    WeightMapConfig,
    dataset_normalization,
)
from training.geometry import TileGeometry
from training.loop.config import ConfigError, DataConfig, TrainConfig
from training.loop.evaluate import interior_class
from training.loop.seeding import worker_init_fn
from training.normalization import Normalization


@dataclass
class Splits:
    """A run's decoded data and what follows from it.

    Attributes:
        labels: the masks' classes (mask values, ignore value, foreground classes).
        class_names: ``data.classes`` or the classes' own names (metrics and bundles use them).
        train_folder, val_folder: the selected pairs (``val_folder`` None: no validation).
        train_examples, val_examples: the decoded pairs.
        in_channels: the network's input channels (``model.in_channels`` or the images').
        normalization: per image, or fixed from the training images' pooled statistics.
        interior_class: the class the adapted Rand error compares (None: no Rand error).
    """

    labels: LabelSpec
    class_names: list[str]
    train_folder: SegmentationFolder
    val_folder: SegmentationFolder | None
    train_examples: list[Example]
    val_examples: list[Example]
    in_channels: int
    normalization: Normalization
    interior_class: int | None


def select_folders(d: DataConfig) -> tuple[SegmentationFolder, SegmentationFolder | None]:
    """The training pairs and the validation pairs (None: none) that ``config.data`` names; the
    classes are read from the training masks and used for the validation masks too."""
    folder = SegmentationFolder(d.images, d.masks, labels=None, ignore=d.ignore_index)
    if d.val_images:
        train = folder.select(d.train) if d.train else folder
        val = SegmentationFolder(d.val_images, d.val_masks, labels=folder.labels, ignore=d.ignore_index)
        return train, val
    val = folder.select(d.val) if d.val else None
    if d.train:
        return folder.select(d.train), val
    held = set(val.names) if val is not None else set()
    return folder.select([n for n in folder.names if n not in held]), val


def load_splits(config: TrainConfig) -> Splits:
    """Select and decode the training and validation pairs of ``config.data`` (errors name the
    setting or the file)."""
    d = config.data
    train, val = select_folders(d)
    labels = train.labels
    if d.classes and len(d.classes) != labels.num_classes:
        raise ConfigError(f"data.classes names {len(d.classes)} classes, the masks have {labels.num_classes}")
    train_examples = train.load_all()
    val_examples = val.load_all() if val is not None else []
    if not train_examples:
        raise DatasetError("no training images selected")
    image = train_examples[0].image
    class_names = list(d.classes or labels.classes)
    splits = Splits(
        labels=labels,
        class_names=class_names,
        train_folder=train,
        val_folder=val,
        train_examples=train_examples,
        val_examples=val_examples,
        in_channels=config.model.in_channels or (1 if image.ndim == 2 else image.shape[2]),
        normalization=Normalization("image") if d.normalization == "image" else dataset_normalization(train_examples),
        interior_class=interior_class(class_names, d.rand_class),
    )
    if config.run.threshold == "calibrate" and labels.num_classes != 2:
        raise ConfigError(f"run.threshold: calibrate needs a two-class task; the masks have {labels.num_classes} classes")
    return splits


def training_patches(config: TrainConfig, splits: Splits, geometry: TileGeometry) -> PatchDataset:
    """The training samples: overlap-tile patches of ``patch.size`` pixels for a network of
    ``geometry``, with weight maps (``loss.weight_map``) and augmentation."""
    c = config
    geometry.check_input(c.patch.size)
    weights = (
        WeightMapConfig(class_weights=c.loss.class_weights, w0=c.loss.w0, sigma=c.loss.sigma)
        if c.loss.weight_map
        else UNIFORM_WEIGHTS
    )
    return PatchDataset(
        splits.train_examples,
        geometry,
        c.patch.size,
        splits.labels.num_classes,
        normalization=splits.normalization,
        augmentation=build_augmentation(c.augment, seed=c.run.seed, label_offset=c.data.label_offset),
        weights=weights,
        foreground_classes=splits.labels.foreground,
        foreground_share=c.data.foreground_fraction,
        samples_per_epoch=c.patch.samples_per_epoch,
        seed=c.run.seed,
    )


def training_loader(patches: PatchDataset, config: TrainConfig, device: torch.device) -> DataLoader:
    """Batches of ``patches`` in ``run.workers`` worker processes (seeded from the torch seed by
    :func:`training.loop.seeding.worker_init_fn`), pinned for a CUDA ``device``."""
    workers = config.run.workers
    return DataLoader(
        patches,
        batch_size=config.patch.batch_size,
        num_workers=workers,
        worker_init_fn=worker_init_fn if workers else None,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
