"""Backbone pre-training as an image classifier (``tessera train-classifier``).

The transfer-learning workflow of Keras' ``include_top=False``: train an smp encoder with a
pooling + linear head (:class:`training.models.Classifier`) on a folder of class sub-folders, save
it as a *classification bundle*, then start a segmentation model's encoder from it
(``model.encoder_weights: classifier.safetensors`` in a training config; the encoder tensors are
stored under ``encoder.*``, exactly the names an smp segmentation model's encoder has).

Data layout::

    root/cat/001.png  root/cat/002.jpg  root/dog/...     one sub-folder per class (sorted names)

Images are decoded with :func:`training.io.images.read_image`, fitted to one channel count, resized
to ``size x size`` pixels (``cv2.INTER_AREA`` when shrinking, bilinear when growing) and normalised
per image (:class:`training.normalization.Normalization`, recorded in the bundle). Training
augments with random translations of up to ``shift`` pixels, cut from a mirror-padded copy
(:func:`training.mirror.mirror_pad`). Adam with poly learning-rate decay; a share ``val_fraction``
of each class is held out (stratified, seeded) unless a validation folder is given.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.bundle import Bundle, BundleError, BundleInfo, load_bundle, save_bundle
from training.data.dataset import IMAGE_SUFFIXES, DatasetError, natural_key
from training.device import resolve_device
from training.errors import OptionError
from training.io.images import ImageError, channel_count, match_channels, read_image
from training.mirror import mirror_pad
from training.models import build_model, parse_arch
from training.normalization import Normalization

#: Images predicted per forward pass when scoring.
EVAL_BATCH = 256


@dataclass
class ClassifierConfig:
    """Settings of :func:`train_classifier` (all have CLI flags)."""

    encoder: str = "tu-resnet10t"
    size: int = 32
    epochs: int = 10
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    shift: int = 2
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    device: str = "auto"

    def validate(self) -> ClassifierConfig:
        checks = [
            (self.size >= 8, "size must be >= 8"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.lr > 0, "learning rate must be > 0"),
            (0 <= self.shift < self.size, "shift must be in [0, size)"),
            (0 <= self.val_fraction < 1, "val fraction must be in [0, 1)"),
            (self.max_minutes is None or self.max_minutes > 0, "max minutes must be > 0"),
        ]
        for ok, problem in checks:
            if not ok:
                raise OptionError(problem)
        return self


@dataclass
class ClassSet:
    """Decoded, resized images ``(N, size, size, C)`` (original dtype), labels ``(N,)``, names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    files: list[str]

    def subset(self, index: np.ndarray) -> ClassSet:
        return ClassSet(self.images[index], self.labels[index], self.classes, [self.files[i] for i in index])


def list_class_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and ``(file, class index)`` pairs; errors name the
    folder when it has fewer than two classes or a class without images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    classes = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if len(classes) < 2:
        raise DatasetError(f"{root}: needs one sub-folder per class (at least 2), found {classes}")
    items: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted((p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
        if not files:
            raise DatasetError(f"{root / name}: class folder without images ({', '.join(IMAGE_SUFFIXES)})")
        items.extend((path, index) for path in files)
    return classes, items


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(H, W[, C])`` -> ``(size, size, C)``, same dtype (area when shrinking, bilinear otherwise)."""
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[:2] != (size, size):
        shrink = pixels.shape[0] > size or pixels.shape[1] > size
        resized = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        pixels = resized[..., None] if resized.ndim == 2 else resized
    return pixels


def load_class_folder(root: str | Path, size: int, in_channels: int | None = None, classes: list[str] | None = None) -> ClassSet:
    """Decode every image of a class folder (see the module docstring)."""
    names, items = list_class_folder(root)
    if classes is not None and names != classes:
        raise DatasetError(f"{root}: classes {names} differ from the training classes {classes}")
    decoded = []
    for path, _ in items:
        try:
            decoded.append(read_image(path))
        except ImageError as error:
            raise DatasetError(str(error)) from None
    channels = in_channels or max(channel_count(p) for p in decoded)
    dtypes = {p.dtype for p in decoded}
    if len(dtypes) > 1:
        raise DatasetError(f"{root}: images mix pixel types {sorted(map(str, dtypes))}; convert them to one")
    fitted = []
    for (path, _), pixels in zip(items, decoded):
        try:
            fitted.append(resize(match_channels(pixels, channels), size))
        except ImageError as error:
            raise DatasetError(f"{path}: {error}") from None
    labels = np.array([label for _, label in items], np.int64)
    return ClassSet(np.stack(fitted), labels, names, [str(path) for path, _ in items])


def normalise(images: np.ndarray, normalization: Normalization) -> torch.Tensor:
    """``(N, H, W, C)`` raw pixels -> float32 ``(N, C, H, W)``, each image with its own statistics."""
    out = [Normalization.apply(image, *normalization.statistics(image)) for image in images]
    return torch.from_numpy(np.stack(out))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` positions with ``fraction`` of every class held out (at least one per class
    when ``fraction > 0``)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        count = max(1, round(fraction * index.size)) if fraction > 0 else 0
        val.extend(index[:count])
        train.extend(index[count:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))


def shifted_batch(padded: torch.Tensor, size: int, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``size x size`` crops (translations of up to ``shift`` px) of mirror-padded images."""
    n = padded.shape[0]
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])


@torch.no_grad()
def predict_classes(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device) -> np.ndarray:
    """Class indices for normalised inputs ``(N, C, H, W)``."""
    model.eval()
    out = [model(inputs[i : i + EVAL_BATCH].to(device)).argmax(1).cpu() for i in range(0, len(inputs), EVAL_BATCH)]
    return torch.cat(out).numpy()


def train_classifier(
    data: str | Path,
    output: str | Path,
    config: ClassifierConfig | None = None,
    val_data: str | Path | None = None,
    command: str = "",
    log=print,
) -> dict[str, Any]:
    """Train a classifier on a class folder and write its bundle to ``output``; returns a summary
    (accuracies, epochs, seconds, bundle path)."""
    config = (config or ClassifierConfig()).validate()
    output = Path(output)
    if output.suffix != ".safetensors":
        raise BundleError(f"{output}: bundle files end in .safetensors")
    start = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    dataset, train_set, val_set = class_splits(data, val_data, config)
    normalization = Normalization("image")
    in_channels = dataset.images.shape[-1]
    spec = parse_arch(f"classifier:{config.encoder}", in_channels, len(dataset.classes))
    model = build_model(spec).to(device)
    padded = padded_inputs(train_set.images, normalization, config.shift)
    targets = torch.from_numpy(train_set.labels)
    val_inputs = normalise(val_set.images, normalization) if len(val_set.labels) else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    deadline = start + 60 * config.max_minutes if config.max_minutes else None
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    for epoch in range(config.epochs):
        loss = train_epoch(model, optimizer, padded, targets, config, epoch, generator, device)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss}
        if val_inputs is not None:
            row["val_accuracy"] = float((predict_classes(model, val_inputs, device) == val_set.labels).mean())
        history.append(row)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if deadline is not None and time.monotonic() >= deadline:
            break
    metrics = {k: v for k, v in history[-1].items()}
    provenance = {
        "command": command,
        "config": asdict(config),
        "data": {"train": str(data), "val": str(val_data) if val_data else None,
                 "train_images": int(len(targets)), "val_images": int(len(val_set.labels))},
        "seed": config.seed,
        "device": str(device),
        "seconds": round(time.monotonic() - start, 1),
    }
    info = BundleInfo(
        spec=spec, classes=dataset.classes, in_channels=in_channels, normalization=normalization, geometry=None,
        tile={"input": config.size}, task="classification", provenance=provenance, metrics=metrics,
    )
    save_bundle(output, model, info)
    return {"bundle": str(output), "classes": dataset.classes, "epochs": len(history), "history": history,
            "metrics": metrics, "seconds": round(time.monotonic() - start, 1)}


def class_splits(
    data: str | Path, val_data: str | Path | None, config: ClassifierConfig
) -> tuple[ClassSet, ClassSet, ClassSet]:
    """The whole class folder ``data``, its training images and the validation images: the folder
    ``val_data`` (same classes and channels), else ``config.val_fraction`` of each class held out."""
    dataset = load_class_folder(data, config.size)
    if val_data is not None:
        return dataset, dataset, load_class_folder(val_data, config.size, dataset.images.shape[-1], dataset.classes)
    train_index, val_index = stratified_split(dataset.labels, config.val_fraction, config.seed)
    return dataset, dataset.subset(train_index), dataset.subset(val_index)


def padded_inputs(images: np.ndarray, normalization: Normalization, shift: int) -> torch.Tensor:
    """Normalised images ``(N, C, H + 2 shift, W + 2 shift)``, mirror-padded by ``shift`` pixels so
    that shifted crops (:func:`shifted_batch`) never leave the image."""
    inputs = normalise(images, normalization)
    pad = (shift, shift)
    return torch.from_numpy(
        np.stack([mirror_pad(x, pad, pad) for x in inputs.permute(0, 2, 3, 1).numpy()])
    ).permute(0, 3, 1, 2).contiguous()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    padded: torch.Tensor,
    targets: torch.Tensor,
    config: ClassifierConfig,
    epoch: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over the training images in ``generator``'s order, shifted crops, the poly learning
    rate over all ``config.epochs``; returns the mean cross-entropy."""
    model.train()
    steps_per_epoch = -(-len(targets) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    step = epoch * steps_per_epoch
    order = torch.randperm(len(targets), generator=generator)
    total = 0.0
    for first in range(0, len(order), config.batch_size):
        index = order[first : first + config.batch_size]
        batch = shifted_batch(padded[index], config.size, config.shift, generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1 - step / total_steps) ** config.poly_power
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch), targets[index].to(device))
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
        step += 1
    return total / len(targets)


def evaluate_classifier(bundle: Bundle | str | Path, data: str | Path, device: str = "auto") -> dict[str, Any]:
    """Accuracy of a classification bundle on a class folder (same classes, same preprocessing)."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if bundle.info.task != "classification":
        raise BundleError(f"{bundle.path}: not a classification bundle (task {bundle.info.task!r})")
    size = int(bundle.info.tile["input"])
    dataset = load_class_folder(data, size, bundle.info.in_channels, bundle.info.classes)
    resolved = resolve_device(device)
    predicted = predict_classes(bundle.model.to(resolved), normalise(dataset.images, bundle.info.normalization), resolved)
    return {"accuracy": float((predicted == dataset.labels).mean()), "images": int(len(dataset.labels))}
