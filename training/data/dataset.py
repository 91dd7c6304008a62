"""Segmentation datasets on disk: a folder of images and a folder of masks paired by file stem.

Layout::

    images/0.png  images/1.tif  ...      PNG, JPEG, TIFF, BMP; 8 or 16 bit; gray or RGB; any sizes
    masks/0.png   masks/1.tif   ...      index masks, one per image, same stem, same height x width
    masks/classes.yaml                   optional: mask value -> class name (also .yml / .json;
                                          looked for in the mask folder, then beside it)

``classes.yaml`` is either a plain mapping ``{0: membrane, 255: cell}`` or, with options::

    classes: {0: membrane, 255: cell}    # mask value -> class name; class index = order of values
    ignore: 128                          # optional mask value that is not trained or scored
    foreground: [membrane]               # optional: classes foreground oversampling centres on

Without a classes file the masks' values are read: values within {0, 255} or {0, 1} are a binary
mask (``background``, ``foreground``); values 0..K-1 (all present) are class indices (``class_0``
...); anything else (0/1 and 0/255 mixed, gaps such as VOC's 255 border) is an error asking for a
classes file rather than a guess. Classes may also be passed explicitly (:class:`LabelSpec`).

Bad data stops with a :class:`DatasetError` naming the file: an image without a mask or a mask
without an image, a size mismatch, a mask value that is no class, an unreadable file. Nothing is
skipped silently. Files whose suffix is not an image suffix (``classes.yaml``, a README) are not
data and are not listed.

Public API
----------
* :data:`IGNORE_INDEX` (from :mod:`training.labels`) marks ignored target pixels.
* :class:`LabelSpec` -- class names, the mask value of each class, the ignore value, foreground
  classes; ``encode(mask)`` turns mask values into int64 class indices (:data:`IGNORE_INDEX`).
* :class:`SegmentationFolder` -- ``SegmentationFolder(images, masks, labels=None, ignore=None)``;
  ``len``, ``names``, ``load(i) -> Example``, ``load_all()``, ``select(items)`` (a split by
  stems, stem ranges such as ``"0-24"``, positions ``"pos:0-4"``, or a text file of stems;
  :mod:`training.data.selection`).
* :class:`Example` -- ``name``, ``image`` (decoded, ``(H, W)`` or ``(H, W, C)``), ``target``
  (``(H, W)`` int64 class indices, :data:`IGNORE_INDEX` where ignored).
* :func:`isbi2012` -- the shipped ISBI 2012 example data; :data:`ISBI_TRAIN`,
  :data:`ISBI_HOLDOUT` (slices 0-24 and 25-29).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from training.data.selection import Items, SelectionError, select
from training.errors import TesseraError
from training.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageError,
    channel_count,
    match_channels,
    read_image,
)
from training.labels import IGNORE_INDEX

#: Names looked for, in order, in the mask folder and then its parent.
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
#: Class names used for binary masks without a classes file.
BINARY_CLASSES = ("background", "foreground")

ISBI_ROOT = Path(__file__).resolve().parents[1] / "assets" / "isbi2012"
#: The ISBI 2012 convention: train on slices 0-24, hold out 25-29.
ISBI_TRAIN = tuple(range(25))
ISBI_HOLDOUT = tuple(range(25, 30))


class DatasetError(TesseraError):
    """Data that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelSpec:
    """How mask values become class indices.

    Attributes:
        classes: class names; class ``i`` is stored in masks as ``values[i]``.
        values: the mask value of each class (ISBI: ``(0, 255)`` for membrane, cell).
        ignore: a mask value that is neither trained nor scored, or None.
        foreground: class indices that foreground oversampling centres patches on
            (default: every class but index 0).
    """

    classes: tuple[str, ...]
    values: tuple[int, ...]
    ignore: int | None = None
    foreground: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise DatasetError(f"a segmentation needs at least 2 classes, got {list(self.classes)}")
        if len(self.classes) != len(self.values):
            raise DatasetError(f"{len(self.classes)} class names for {len(self.values)} mask values")
        if len(set(self.values)) != len(self.values) or len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"mask values and class names must be unique: {self.as_mapping()}")
        if self.ignore is not None and self.ignore in self.values:
            raise DatasetError(f"ignore value {self.ignore} is also the value of a class")
        if any(v < 0 for v in self.values) or (self.ignore is not None and self.ignore < 0):
            raise DatasetError("mask values must be >= 0")
        if not self.foreground:
            object.__setattr__(self, "foreground", tuple(range(1, len(self.classes))))
        if any(not 0 <= k < len(self.classes) for k in self.foreground):
            raise DatasetError(f"foreground classes {self.foreground} are not class indices")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def as_mapping(self) -> dict[int, str]:
        return dict(zip(self.values, self.classes))

    def encode(self, mask: np.ndarray, name: str = "mask") -> np.ndarray:
        """Mask values ``(H, W)`` -> int64 class indices; ignored pixels -> :data:`IGNORE_INDEX`.

        Raises :class:`DatasetError` naming ``name`` and the offending values when a value is
        neither a class nor the ignore value.
        """
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise DatasetError(
                f"{name}: a mask must be one channel of integer class values, got "
                f"{mask.dtype} {mask.shape}"
            )
        size = max(max(self.values), self.ignore or 0, int(mask.max())) + 1
        lookup = np.full(size, -1, dtype=np.int64)
        lookup[list(self.values)] = np.arange(self.num_classes)
        if self.ignore is not None:
            lookup[self.ignore] = IGNORE_INDEX
        target = lookup[mask]
        if (target == -1).any():
            unknown = sorted(int(v) for v in np.unique(mask[target == -1]))
            raise DatasetError(
                f"{name}: mask value(s) {unknown[:10]} are not classes "
                f"(classes: {self.as_mapping()}, ignore: {self.ignore})"
            )
        return target

    def to_dict(self) -> dict:
        return {
            "classes": self.as_mapping(),
            "ignore": self.ignore,
            "foreground": [self.classes[k] for k in self.foreground],
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "classes") -> LabelSpec:
        """From a classes-file mapping (see the module docstring); ``source`` names it in errors."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"{source}: expected a mapping of mask value -> class name")
        options = "classes" in data
        mapping = data["classes"] if options else data
        if not isinstance(mapping, Mapping) or not mapping:
            raise DatasetError(f"{source}: 'classes' must map mask values to class names")
        try:
            pairs = sorted((int(value), str(name)) for value, name in mapping.items())
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: mask values must be integers, got {list(mapping)}") from None
        names = [name for _, name in pairs]
        extra = set(data) - {"classes", "ignore", "foreground"} if options else set()
        if extra:
            raise DatasetError(f"{source}: unknown key(s) {sorted(extra)}")
        foreground = (data.get("foreground") or []) if options else []
        foreground = [foreground] if isinstance(foreground, str) else list(foreground)
        unknown = [f for f in foreground if f not in names]
        if unknown:
            raise DatasetError(f"{source}: foreground class(es) {unknown} are not among {names}")
        ignore = data.get("ignore") if options else None
        return cls(
            classes=tuple(names),
            values=tuple(value for value, _ in pairs),
            ignore=None if ignore is None else int(ignore),
            foreground=tuple(names.index(f) for f in foreground),
        )

    @classmethod
    def read(cls, path: str | Path) -> LabelSpec:
        """Read a ``classes.yaml`` / ``.json`` file."""
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise DatasetError(f"{path}: cannot read classes ({error})") from None
        return cls.from_dict(data, source=str(path))


@dataclass(frozen=True)
class Pair:
    """One image file and its mask file."""

    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Example:
    """A decoded pair: ``image`` as decoded (``(H, W)`` or ``(H, W, C)``), ``target`` int64 ``(H, W)``."""

    name: str
    image: np.ndarray
    target: np.ndarray


def natural_key(text: str) -> list:
    """Sort key that orders ``2`` before ``10`` (ISBI slices are ``0.png`` ... ``29.png``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class SegmentationFolder:
    """Images and masks paired by file stem, with their :class:`LabelSpec`.

    Args:
        images: folder of images.
        masks: folder of masks (same stems).
        labels: a :class:`LabelSpec`, a path to a classes file, or None to look for one (see the
            module docstring) and otherwise infer the classes from the masks' values.
        ignore: mask value to ignore; overrides the classes file's ``ignore``.
        max_pixels: decoding limit per image (see :func:`training.io.images.read_image`).

    Pairing happens at construction; pixels are read by :meth:`load`.
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        labels: LabelSpec | str | Path | None = None,
        ignore: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.images_dir, self.masks_dir = Path(images), Path(masks)
        self.max_pixels = max_pixels
        self.pairs = pair_files(self.images_dir, self.masks_dir)
        self.labels = self._labels(labels, ignore)

    @classmethod
    def _from_pairs(cls, parent: SegmentationFolder, pairs: list[Pair]) -> SegmentationFolder:
        subset = cls.__new__(cls)
        subset.images_dir, subset.masks_dir = parent.images_dir, parent.masks_dir
        subset.max_pixels, subset.labels, subset.pairs = parent.max_pixels, parent.labels, pairs
        return subset

    def _labels(self, labels: LabelSpec | str | Path | None, ignore: int | None) -> LabelSpec:
        if labels is None:
            found = find_class_file(self.masks_dir)
            labels = LabelSpec.read(found) if found else self._infer_labels(ignore)
        elif not isinstance(labels, LabelSpec):
            labels = LabelSpec.read(labels)
        if ignore is not None and ignore != labels.ignore:
            labels = LabelSpec(labels.classes, labels.values, ignore, labels.foreground)
        return labels

    def _infer_labels(self, ignore: int | None) -> LabelSpec:
        values: set[int] = set()
        for pair in self.pairs:
            values.update(int(v) for v in np.unique(self._read_mask(pair)))
        values.discard(ignore)
        if values <= {0, 255} or values <= {0, 1}:
            top = 255 if 255 in values else 1
            return LabelSpec(BINARY_CLASSES, (0, top), ignore)
        kept = [v for v in range(max(values) + 1) if v != ignore]
        if values != set(kept):
            missing = sorted(set(kept) - values)
            raise DatasetError(
                f"{self.masks_dir}: masks hold the values {sorted(values)[:12]}, which are neither binary "
                f"(0/1 or 0/255) nor class indices 0..K-1 (missing {missing[:8]}): add a classes.yaml "
                f"mapping each mask value to a class name (with 'ignore: V' for a value marking "
                f"unlabelled pixels)"
            )
        return LabelSpec(tuple(f"class_{v}" for v in kept), tuple(kept), ignore)

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes

    def load(self, index: int) -> Example:
        """Decode pair ``index``; raises :class:`DatasetError` naming the file on any problem."""
        pair = self.pairs[index]
        image = self._read(pair.image)
        mask = self._read_mask(pair)
        if image.shape[:2] != mask.shape[:2]:
            raise DatasetError(
                f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {pair.image.name} "
                f"is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        return Example(pair.name, image, self.labels.encode(mask, str(pair.mask)))

    def load_all(self) -> list[Example]:
        """Every pair decoded, images fitted to one channel count (gray is replicated to RGB when
        the folder mixes them; any other mix is an error naming the file)."""
        examples = [self.load(i) for i in range(len(self))]
        channels = max(channel_count(e.image) for e in examples) if examples else 1
        fitted = []
        for example, pair in zip(examples, self.pairs):
            try:
                image = match_channels(example.image, channels)
            except ImageError as error:
                raise DatasetError(f"{pair.image}: {error} (other images in the folder)") from None
            fitted.append(Example(example.name, image, example.target))
        return fitted

    def select(self, items: Items) -> SegmentationFolder:
        """A split: the pairs ``items`` name, in that order -- stems, stem ranges such as
        ``"25-29"``, positions (``"pos:0-4"`` or ints), or a text file listing one item per line
        (:mod:`training.data.selection`)."""
        try:
            chosen = select(self.names, items, self.images_dir)
        except SelectionError as error:
            raise DatasetError(str(error)) from None
        return self._from_pairs(self, [self.pairs[i] for i in chosen])

    # ----------------------------------------------------------------- reading
    def _read(self, path: Path) -> np.ndarray:
        try:
            return read_image(path, self.max_pixels)
        except ImageError as error:
            raise DatasetError(str(error)) from None

    def _read_mask(self, pair: Pair) -> np.ndarray:
        mask = self._read(pair.mask)
        if mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
            raise DatasetError(
                f"{pair.mask}: a mask must be one channel of 8 or 16 bit integer class values, got "
                f"{mask.dtype} with shape {mask.shape}"
            )
        return mask


def list_images(folder: Path) -> dict[str, Path]:
    """Image files in ``folder`` by stem; two files with one stem are an error."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise DatasetError(f"{path}: two files with stem {path.stem!r} ({found[path.stem].name})")
            found[path.stem] = path
    return found


def pair_files(images: Path, masks: Path) -> list[Pair]:
    """Pairs by stem in natural order; any unpaired file is an error naming it."""
    image_files, mask_files = list_images(images), list_images(masks)
    for stem, path in image_files.items():
        if stem not in mask_files:
            raise DatasetError(f"{path}: no mask with stem {stem!r} in {masks}")
    for stem, path in mask_files.items():
        if stem not in image_files:
            raise DatasetError(f"{path}: no image with stem {stem!r} in {images}")
    if not image_files:
        raise DatasetError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems = sorted(image_files, key=natural_key)
    return [Pair(stem, image_files[stem], mask_files[stem]) for stem in stems]


def find_class_file(masks: Path) -> Path | None:
    """The classes file in the mask folder, else beside it, else None."""
    for folder in (masks, masks.parent):
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def isbi2012(split: Sequence[int] | str | None = None) -> SegmentationFolder:
    """The shipped ISBI 2012 example data (30 slices; ``split`` e.g. :data:`ISBI_TRAIN`)."""
    data = SegmentationFolder(ISBI_ROOT / "image", ISBI_ROOT / "label")
    return data if split is None else data.select(split)
