"""The segmentation trainer behind ``tessera train``.

One :class:`Trainer` runs a :class:`~training.loop.config.TrainConfig`:

* **model** -- the classic U-Net or any smp architecture/encoder (:func:`training.models.parse_arch`),
  its encoder optionally started from a local file (a torchvision/timm state dict or one of our
  classifier bundles) and frozen for the first ``freeze_encoder_epochs`` epochs (-1: throughout;
  frozen means no gradient *and* BatchNorm statistics kept, Keras' ``trainable = False``);
* **data** -- mirror-extrapolated overlap-tile patches (:mod:`training.data.patches`) with the
  paper's weight map and the albumentations pipeline (:mod:`training.data.augment`), DataLoader
  workers seeded by :func:`training.loop.seeding.worker_init_fn`;
* **optimisation** -- Adam or SGD (momentum 0.99 by default), learning rate constant or poly
  ``lr * (1 - progress) ** 0.9`` where progress is the larger of the step share and the wall-clock
  share of ``run.max_minutes`` (validation included, so the rate reaches 0 when the budget ends);
  loss from :mod:`training.loop.losses`; channels_last, and autocast as ``run.precision`` asks (mixed
  precision on CUDA by default, bf16 on the CPU on request; :mod:`training.device`);
* **validation** -- whole hold-out images through :class:`training.inference.predictor.Predictor`, the very
  code ``tessera predict`` runs, scored by :mod:`training.loop.metrics`; before it, optionally, precise
  BatchNorm statistics from clean training patches (``run.precise_bn``, :mod:`training.loop.batchnorm`)
  and a decision threshold calibrated on training images (``run.threshold``,
  :mod:`training.inference.decision`); at the end of the run the best bundle's threshold is calibrated
  again for each test-time augmentation mode the model trained for (``tta_thresholds``);
* **outputs** in ``run.output``: ``best.safetensors`` and ``last.safetensors`` bundles (provenance:
  command, config, data, seed, times, versions; validation metrics), ``metrics.csv`` and
  ``metrics.json`` (one row per epoch), ``curves.png`` and ``overlays/*.png`` at the end, and the
  resume state beside ``last`` (:mod:`training.loop.checkpoint`).

Reproducibility: every random generator (python, numpy, torch, the augmentation pipeline, the
DataLoader workers' seeds) is reseeded at the start of each epoch from ``(seed, epoch)``
(:mod:`training.loop.seeding`), and the optimizer state is restored in the parameters' memory layout
(:mod:`training.loop.checkpoint`), so ``resume`` continues exactly as an uninterrupted run would:
bit-identical weights on the CPU with a fixed thread count, with or without worker processes
(tested). The exception: with ``run.max_minutes`` the poly learning rate and the length of the
last epoch follow the wall clock, so such runs do not repeat bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.data.dataset import DatasetError
from training.loop.averaging import WeightAverage
from training.loop.batchnorm import recompute_batchnorm
from training.bundle import Bundle, bundle_path, file_sha256, load_bundle, new_bundle_info, read_bundle_info, save_bundle
from training.loop.checkpoint import CheckpointError, load_optimizer, load_state, save_state
from training.loop.config import LOWER_IS_BETTER, TrainConfig
from training.data.augment import build_augmentation
from training.data.dataset import Example, SegmentationFolder
from training.data.patches import UNIFORM_WEIGHTS, PatchDataset, WeightMapConfig, dataset_normalization
from training.device import autocast, autocast_dtype, resolve_device
from training.loop.config import ConfigError
from training.loop.losses import build_loss
from training.loop.evaluate import calibrate, calibration_subset, interior_class, score
from training.models import build_model, load_encoder_weights, parse_arch
from training.normalization import Normalization
from training.loop.seeding import epoch_seed, seed_everything, worker_init_fn

#: File names inside the output folder.
BEST, LAST = "best.safetensors", "last.safetensors"
CSV_NAME, JSON_NAME, CURVES_NAME, OVERLAYS_DIR = "metrics.csv", "metrics.json", "curves.png", "overlays"
#: Test-time augmentation modes the best bundle's threshold is calibrated for at the end of a run.
TTA_CALIBRATED = ("flips", "d4")
#: Packages whose versions go into every bundle's provenance.
VERSIONED = ("torch", "segmentation-models-pytorch", "albumentations", "numpy", "tessera")


def versions() -> dict[str, str]:
    """Python and key package versions (provenance)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class TrainResult:
    """What a finished run produced."""

    output: Path
    best: Path
    last: Path
    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    stopped: str
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- model helpers
def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """The contracting path: an smp model's ``encoder``; the classic U-Net's stem and down blocks."""
    if hasattr(model, "encoder"):
        return [model.encoder]
    if hasattr(model, "stem") and hasattr(model, "down"):
        return [model.stem, *model.down]
    raise ConfigError(f"{type(model).__name__} has no encoder to freeze")


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm in eval mode) or unfreeze the encoder."""
    for module in encoder_modules(model):
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)
        module.train(not frozen and model.training)


def build_network(
    config: TrainConfig, in_channels: int, num_classes: int, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], nn.Module]:
    """The spec and the network of ``config.model``: freshly initialised (encoder weights loaded),
    or with ``model.init`` a bundle's network and weights (:func:`network_from_bundle`)."""
    m = config.model
    if m.init:
        path = bundle_path(m.init)
        spec, model, fresh = network_from_bundle(path, in_channels, num_classes)
        restarted = f"; {len(fresh)} tensors of the output layer start fresh ({num_classes} classes)" if fresh else ""
        log(f"model.init: the network and weights of {path}{restarted}")
        return spec, model
    options = {"depth": m.depth, "width": m.width, "padding": m.padding, "norm": m.norm, "dropout": m.dropout}
    if m.arch != "unet":
        options = {}
    spec = parse_arch(m.arch, in_channels, num_classes, **options)
    if spec["arch"] == "classifier":
        raise ConfigError(f"model.arch: {m.arch!r} is a classifier; use 'tessera train-classifier'")
    model = build_model(spec)
    if m.encoder_weights:
        if spec["arch"] != "smp":
            raise ConfigError("model.encoder_weights: only smp architectures have a pretrained encoder")
        path = Path(m.encoder_weights)
        if path.suffix == ".safetensors":
            _check_encoder_bundle(path, spec)
        load_encoder_weights(model.encoder, path)
    return spec, model


def network_from_bundle(path: Path, in_channels: int, num_classes: int) -> tuple[dict[str, Any], nn.Module, list[str]]:
    """Fine-tuning: the network a segmentation bundle describes, with its weights.

    The architecture is the bundle's whatever ``model.arch``/``depth``/``width`` say. With another
    number of classes, the tensors whose shape depends on it (the output layer) keep their fresh
    initialisation; their names are returned. Other input channels are an error.
    """
    bundle = load_bundle(path)
    info = bundle.info
    if info.task != "segmentation":
        raise ConfigError(f"model.init: {path} is a {info.task} bundle; an encoder goes in model.encoder_weights")
    if info.in_channels != in_channels:
        raise ConfigError(f"model.init: {path} takes {info.in_channels}-channel images, the training images have {in_channels}")
    spec = {**info.spec, "num_classes": num_classes}
    model = build_model(spec)
    given = bundle.model.state_dict()
    fresh = [key for key, tensor in model.state_dict().items() if given[key].shape != tensor.shape]
    model.load_state_dict({key: tensor for key, tensor in given.items() if key not in fresh}, strict=False)
    return spec, model, fresh


def init_source(name: str) -> dict[str, str]:
    """Which file ``model.init`` names, and its SHA-256: a bundle's identity even if it is later
    overwritten (``tessera calibrate`` can rewrite one in place)."""
    path = bundle_path(name)
    return {"from": str(path.resolve()), "sha256": file_sha256(path)}


def _check_encoder_bundle(path: Path, spec: dict[str, Any]) -> None:
    """A classifier bundle must have been trained with the same encoder (clear error otherwise)."""
    try:
        info = read_bundle_info(path)
    except ValueError:
        return  # a plain safetensors state dict, not a bundle: load_encoder_weights checks it
    encoder = info.spec.get("encoder")
    if encoder and encoder != spec.get("encoder"):
        raise ConfigError(f"model.encoder_weights: {path} holds a {encoder!r} encoder, the model uses {spec['encoder']!r}")


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Runs one training configuration; see the module docstring.

    Args:
        config: the validated configuration.
        command: the command line that started the run (provenance); default ``sys.argv``.
        log: where one-line messages go (default: the rich console).
    """

    def __init__(self, config: TrainConfig, command: list[str] | None = None, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.command = shlex.join(command if command is not None else sys.argv)
        self.output = Path(config.run.output)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = resolve_device(config.run.device)
        from rich.console import Console

        self.console = Console(stderr=True)
        self.log = log or self.console.print
        self._load_data()
        seed_everything(config.run.seed)
        self.spec, self.model = build_network(config, self.in_channels, self.labels.num_classes, self.log)
        #: The bundle ``model.init`` started from, for the provenance (None: a fresh network).
        self.init_source = init_source(config.model.init) if config.model.init else None
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        self.loss = build_loss(config.loss.name)
        self.patches = self._patches()
        self._clean_patches: PatchDataset | None = None
        self.optimizer = self._optimizer()
        self.average = WeightAverage(self.model, config.optim.ema) if config.optim.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._needs_scaler())
        self.info = new_bundle_info(
            self.spec, self.model, list(self.labels.classes), self.normalization, provenance={}, metrics={}
        )
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self.wall = 0.0
        self._wall_start: float | None = None
        self.best_score: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.started = now()

    # ------------------------------------------------------------------ set-up
    def _load_data(self) -> None:
        d = self.config.data
        folder = SegmentationFolder(d.images, d.masks, labels=None, ignore=d.ignore_index)
        if d.val_images:
            train = folder.select(d.train) if d.train else folder
            val = SegmentationFolder(d.val_images, d.val_masks, labels=folder.labels, ignore=d.ignore_index)
        else:
            val = folder.select(select_items(d.val)) if d.val else None
            if d.train:
                train = folder.select(select_items(d.train))
            else:
                held = set(val.names) if val is not None else set()
                train = folder.select([n for n in folder.names if n not in held])
        if d.classes and len(d.classes) != folder.labels.num_classes:
            raise ConfigError(f"data.classes names {len(d.classes)} classes, the masks have {folder.labels.num_classes}")
        self.labels = folder.labels
        self.class_names = list(d.classes or folder.labels.classes)
        self.train_folder, self.val_folder = train, val
        self.train_examples: list[Example] = train.load_all()
        self.val_examples: list[Example] = val.load_all() if val is not None else []
        if not self.train_examples:
            raise DatasetError("no training images selected")
        image = self.train_examples[0].image
        self.in_channels = self.config.model.in_channels or (1 if image.ndim == 2 else image.shape[2])
        self.normalization = self._normalization()
        self.interior_class = interior_class(self.class_names, d.rand_class)
        if self.config.run.threshold == "calibrate" and self.labels.num_classes != 2:
            raise ConfigError(f"run.threshold: calibrate needs a two-class task; the masks have {self.labels.num_classes} classes")

    def _normalization(self) -> Normalization:
        if self.config.data.normalization == "image":
            return Normalization("image")
        return dataset_normalization(self.train_examples)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        parameters = self.model.parameters()
        if o.name == "adam":
            return torch.optim.Adam(parameters, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(parameters, lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay)

    def _needs_scaler(self) -> bool:
        return autocast_dtype(self.device, self.config.run.precision) == torch.float16

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.config.patch.samples_per_epoch // self.config.patch.batch_size)

    # ------------------------------------------------------------------ schedule
    def wall_seconds(self) -> float:
        """Wall-clock seconds this run has used, over all its resumed parts, validation included."""
        running = time.monotonic() - self._wall_start if self._wall_start is not None else 0.0
        return self.wall + running

    def progress(self) -> float:
        """Share of the budget used (0..1): the larger of the step share and the wall-clock share
        of ``run.max_minutes``. The wall clock is what the deadline counts, so with a time budget
        the poly rate reaches 0 as the run ends (training time alone would leave it at
        ``(validation share) ** 0.9`` of the peak)."""
        r = self.config.run
        shares = [0.0]
        if r.epochs:
            shares.append(self.step / (r.epochs * self.steps_per_epoch))
        if r.max_minutes:
            shares.append(self.wall_seconds() / (60 * r.max_minutes))
        return min(1.0, max(shares))

    def learning_rate(self) -> float:
        o = self.config.optim
        if o.schedule == "constant":
            return o.lr
        return o.lr * (1 - self.progress()) ** o.poly_power

    # ------------------------------------------------------------------ data
    def _patches(self) -> PatchDataset:
        """The training samples: overlap-tile patches with weight maps and augmentation."""
        c = self.config
        self.model.geometry.check_input(c.patch.size)
        weights = (
            WeightMapConfig(class_weights=c.loss.class_weights, w0=c.loss.w0, sigma=c.loss.sigma)
            if c.loss.weight_map
            else UNIFORM_WEIGHTS
        )
        return PatchDataset(
            self.train_examples,
            self.model.geometry,
            c.patch.size,
            self.labels.num_classes,
            normalization=self.normalization,
            augmentation=build_augmentation(c.augment, seed=c.run.seed, label_offset=c.data.label_offset),
            weights=weights,
            foreground_classes=self.labels.foreground,
            foreground_share=c.data.foreground_fraction,
            samples_per_epoch=c.patch.samples_per_epoch,
            seed=c.run.seed,
        )

    def _loader(self, seed: int) -> DataLoader:
        """This epoch's batches; the sampling streams restart from ``seed`` (workers: from the
        torch seed, via :func:`training.loop.seeding.worker_init_fn`)."""
        self.patches.reseed(seed)
        workers = self.config.run.workers
        return DataLoader(
            self.patches,
            batch_size=self.config.patch.batch_size,
            num_workers=workers,
            worker_init_fn=worker_init_fn if workers else None,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, deadline: float | None, progress=None, task=None) -> tuple[dict[str, float], bool]:
        """Train one epoch (or until ``deadline``, ``time.monotonic()`` seconds); returns the mean
        loss and whether the deadline cut the epoch short."""
        seed = epoch_seed(self.config.run.seed, self.epoch)
        seed_everything(seed)
        frozen = self._encoder_frozen(self.epoch)
        self.model.train()
        if frozen:
            set_encoder_frozen(self.model, True)
        elif self.config.model.freeze_encoder_epochs:
            set_encoder_frozen(self.model, False)
        loader = self._loader(seed)
        lr = self.learning_rate()
        total, count, samples = 0.0, 0, 0
        cut = False
        start = time.monotonic()
        for batch in loader:
            if deadline is not None and time.monotonic() >= deadline:
                cut = True
                break
            loss = self._step(*batch)
            total += loss
            count += 1
            samples += batch[0].shape[0]
            self.step += 1
            self.elapsed += time.monotonic() - start
            start = time.monotonic()
            if progress is not None:
                progress.update(task, advance=1, loss=total / count)
        self.elapsed += time.monotonic() - start
        return {"train_loss": total / max(count, 1), "samples": samples, "lr": lr}, cut

    def _step(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        image = image.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        target = target.to(self.device, non_blocking=True)
        if weight is not None:
            weight = weight.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.run.precision):
            logits = self.model(image)
        loss = self.loss(logits.float(), target, weight if self.config.loss.weight_map else None)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower optim.lr")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model, self.step)
        return float(loss.detach())

    def _encoder_frozen(self, epoch: int) -> bool:
        n = self.config.model.freeze_encoder_epochs
        return n == -1 or epoch < n

    # ------------------------------------------------------------------ validation
    @property
    def scored_model(self) -> nn.Module:
        """The weights validation scores and the bundles hold: the moving average with
        ``optim.ema``, else the live model."""
        return self.average.model if self.average is not None else self.model

    def predictor(self):
        """A :class:`training.inference.predictor.Predictor` over :attr:`scored_model` (what ``tessera
        predict`` runs)."""
        from training.inference.predictor import Predictor

        self.info.provenance = self._provenance()
        return Predictor(Bundle(model=self.scored_model, info=self.info), device=self.device)

    def validate(self) -> dict[str, float]:
        """Score every validation image, whole, through the predictor (pooled over images); with
        ``run.threshold: calibrate`` first choose the decision threshold (:meth:`calibrate`)."""
        if not self.val_examples:
            return {}
        calibrated: dict[str, float] = {}
        try:
            if self.config.run.precise_bn:
                self.recompute_batchnorm()
            if self.config.run.threshold == "calibrate":
                self.info.threshold = self.calibrate()
                calibrated["threshold"] = self.info.threshold
            predictor = self.predictor()
            predictions = [predictor.predict(e.image).labels for e in self.val_examples]
        finally:
            self.model.train()
            if self._encoder_frozen(max(self.epoch - 1, 0)):
                set_encoder_frozen(self.model, True)
        targets = [e.target for e in self.val_examples]
        return {**score(predictions, targets, self.class_names, self.interior_class), **calibrated}

    def recompute_batchnorm(self) -> None:
        """Precise BatchNorm statistics (:mod:`training.loop.batchnorm`) from ``run.precise_bn``
        un-augmented training patches, the same ones at every validation (drawn like training
        patches with the dataset's default foreground share)."""
        if self._clean_patches is None:
            c = self.config
            self._clean_patches = PatchDataset(
                self.train_examples, self.model.geometry, c.patch.size, self.labels.num_classes,
                normalization=self.normalization, augmentation=None, weights=UNIFORM_WEIGHTS,
                samples_per_epoch=c.run.precise_bn, seed=c.run.seed,
            )
        self._clean_patches.reseed(self.config.run.seed)
        batch = self.config.patch.batch_size
        patches = [self._clean_patches[i][0] for i in range(len(self._clean_patches))]
        batches = (torch.stack(patches[i : i + batch]) for i in range(0, len(patches), batch))
        if self.average is not None:
            self.average.follow_modes(self.model)
        recompute_batchnorm(self.scored_model, batches, self.device)

    def calibrate(self, predictor=None) -> float:
        """The decision threshold that scores best on ``run.calibrate_by`` (default: the monitor;
        pixel error when that is the loss) over :func:`~training.loop.evaluate.calibration_subset` of the
        training images, predicted whole by ``predictor`` (default: :meth:`predictor`, no test-time
        augmentation)."""
        predictor = predictor or self.predictor()
        examples = calibration_subset(self.train_examples)
        threshold, _ = calibrate(predictor, examples, self.calibration_metric, self.interior_class)
        return threshold

    @property
    def calibration_metric(self) -> str:
        """What ``run.threshold: calibrate`` chooses the threshold by (see :meth:`calibrate`)."""
        r = self.config.run
        return r.calibrate_by or (r.monitor if r.monitor != "loss" else "pixel_error")

    # ------------------------------------------------------------------ bundles and state
    def _provenance(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "config": self.config.to_dict(),
            "data": {
                "images": str(self.config.data.images),
                "masks": str(self.config.data.masks),
                "train": self.train_folder.names,
                "val": self.val_folder.names if self.val_folder is not None else [],
                "labels": self.labels.to_dict(),
            },
            "init": self.init_source,
            "seed": self.config.run.seed,
            "device": str(self.device),
            "started": self.started,
            "saved": now(),
            "epoch": self.epoch,
            "steps": self.step,
            "train_seconds": round(self.elapsed, 1),
            "versions": versions(),
        }

    def _save(self, path: Path, metrics: dict[str, Any]) -> Path:
        self.info.provenance = self._provenance()
        self.info.metrics = metrics
        self.info.classes = self.class_names
        return save_bundle(path, self.scored_model, self.info)

    def _record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            "wall": self.wall_seconds(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "started": self.started,
            "config": self.config.to_dict(),
        }

    def resume(self) -> None:
        """Continue from ``last.safetensors`` and its state in the output folder."""
        last = self.output / LAST
        optimizer, record, trained = load_state(last)
        tensors = _bundle_tensors(last)
        if self.average is not None:
            if not trained:
                raise CheckpointError(f"{last}: saved without optim.ema; resume with the run's own config")
            self.average.model.load_state_dict(tensors, strict=True)
            tensors = trained
        elif trained:
            raise CheckpointError(f"{last}: saved with optim.ema; resume with the run's own config")
        self.model.load_state_dict(tensors, strict=True)
        load_optimizer(self.optimizer, optimizer)
        self.epoch, self.step, self.elapsed = record["epoch"], record["step"], record["elapsed"]
        self.wall = record.get("wall", record["elapsed"])
        self.best_score, self.best_epoch = record["best_score"], record["best_epoch"]
        self.bad_epochs, self.history, self.started = record["bad_epochs"], record["history"], record["started"]

    # ------------------------------------------------------------------ the run
    def improved(self, metrics: dict[str, Any]) -> bool:
        """Whether ``metrics`` beat the best so far on ``run.monitor``."""
        key = self.config.run.monitor
        value = metrics.get(key if key == "loss" else f"val_{key}")
        if value is None:
            value = metrics.get("train_loss") if key == "loss" else None
        if value is None:
            return True
        lower = key in LOWER_IS_BETTER
        if self.best_score is None or (value < self.best_score if lower else value > self.best_score):
            self.best_score = float(value)
            return True
        return False

    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train until the epochs, the time budget or early stopping end the run.

        ``stop_after`` ends this call after that many epochs, as an interruption would (the run
        continues with ``resume=True``); the schedule still spans the whole configured run.
        """
        r = self.config.run
        if resume:
            self.resume()
        self.output.mkdir(parents=True, exist_ok=True)
        wall_start = self._wall_start = time.monotonic()
        deadline = wall_start + 60 * r.max_minutes - self.wall if r.max_minutes else None
        stopped = "epochs"
        first_epoch = self.epoch
        with self._progress() as progress:
            while True:
                if stop_after is not None and self.epoch - first_epoch >= stop_after:
                    stopped = "interrupted"
                    break
                if r.epochs is not None and self.epoch >= r.epochs:
                    stopped = "epochs"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "time"
                    break
                task = progress.add_task(f"epoch {self.epoch + 1}", total=self.steps_per_epoch, loss=float("nan")) if progress else None
                epoch_start = time.monotonic()
                train_metrics, cut = self.train_epoch(deadline, progress, task)
                self.epoch += 1
                row: dict[str, Any] = {"epoch": self.epoch, **train_metrics}
                if self.epoch % r.val_every == 0 or cut or self.epoch == r.epochs:
                    row.update({f"val_{k}": v for k, v in self.validate().items()})
                row["seconds"] = round(time.monotonic() - epoch_start, 2)
                self.history.append(row)
                is_best = self.improved(row)
                if is_best:
                    self.best_epoch, self.bad_epochs = self.epoch, 0
                    self._save(self.output / BEST, _metrics_for_bundle(row))
                else:
                    self.bad_epochs += 1
                self._save(self.output / LAST, _metrics_for_bundle(row))
                trained = self.model.state_dict() if self.average is not None else None
                save_state(self.output / LAST, self.optimizer, self._record(), trained)
                self._write_history()
                self.log(_summary(row, is_best))
                if progress is not None:
                    progress.remove_task(task)
                if cut:
                    stopped = "time"
                    break
                if r.patience and self.bad_epochs >= r.patience:
                    stopped = "early"
                    break
        files = self._finish()
        best_row = next((row for row in self.history if row["epoch"] == self.best_epoch), {})
        return TrainResult(
            output=self.output,
            best=self.output / BEST,
            last=self.output / LAST,
            history=self.history,
            best_metrics=best_row,
            stopped=stopped,
            seconds=time.monotonic() - wall_start,
            files=files,
        )

    def _progress(self):
        """A rich progress bar with live loss, or a null context when ``run.progress`` is off."""
        import contextlib

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if not self.config.run.progress:
            return contextlib.nullcontext(None)
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    def _write_history(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)
        with open(self.output / CSV_NAME, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        document = {"history": self.history, "best_epoch": self.best_epoch, "monitor": self.config.run.monitor}
        (self.output / JSON_NAME).write_text(json.dumps(document, indent=1))

    def calibrate_tta(self, path: Path) -> dict[str, float]:
        """Calibrate the bundle at ``path`` again for each test-time augmentation mode
        (:data:`TTA_CALIBRATED`) and record the thresholds in it (``tta_thresholds``)."""
        from training.bundle import load_bundle
        from training.inference.predictor import Predictor

        from training.inference.predictor import tta_caveat

        bundle = load_bundle(path)
        thresholds = {
            mode: self.calibrate(Predictor(bundle, device=self.device, tta=mode, threshold=None))
            for mode in TTA_CALIBRATED
            if tta_caveat(bundle.info, mode) is None  # not for views the model never trained on
        }
        bundle.info.tta_thresholds = thresholds
        save_bundle(path, bundle.model, bundle.info)
        return thresholds

    def _finish(self) -> dict[str, Path]:
        """The best bundle's thresholds for test-time augmentation; curves and overlays (PNG)."""
        from training.loop.plots import plot_curves, plot_overlay

        files = {"csv": self.output / CSV_NAME, "json": self.output / JSON_NAME}
        if self.config.run.threshold == "calibrate" and (self.output / BEST).is_file():
            thresholds = self.calibrate_tta(self.output / BEST)
            if thresholds:
                self.log("best bundle, thresholds with test-time augmentation: "
                         + "  ".join(f"{mode} {value}" for mode, value in thresholds.items()))
        if self.history:
            files["curves"] = plot_curves(self.history, self.output / CURVES_NAME)
        if self.val_examples and self.config.run.overlays and (self.output / BEST).is_file():
            from training.bundle import load_bundle
            from training.inference.predictor import Predictor

            predictor = Predictor(load_bundle(self.output / BEST), device=self.device)
            for example in self.val_examples[: self.config.run.overlays]:
                labels = predictor.predict(example.image).labels
                target = np.where(example.target < 0, labels, example.target)
                path = self.output / OVERLAYS_DIR / f"{example.name}.png"
                files[f"overlay_{example.name}"] = plot_overlay(example.image, target, labels, path, example.name)
        return files


def select_items(items: list[str]) -> list[int | str]:
    """Config stem lists: ranges such as ``"0-24"`` are positions (natural stem order), anything
    else is a stem: ``["0-24"]`` -> ``[0, ..., 24]``, ``["26", "a"]`` -> ``["26", "a"]``."""
    from training.data.dataset import parse_selection

    chosen: list[int | str] = []
    for item in items:
        text = str(item)
        if any(c in text for c in "-,") and all(c.isdigit() or c in "-, " for c in text):
            chosen.extend(parse_selection(text))
        else:
            chosen.append(text)
    return chosen


def _bundle_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _metrics_for_bundle(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}


def _summary(row: dict[str, Any], best: bool) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts) + ("  [best]" if best else "")


def train(config: TrainConfig, resume: bool = False, command: list[str] | None = None) -> TrainResult:
    """Run ``config`` (see :class:`Trainer`)."""
    return Trainer(config, command=command).fit(resume=resume)
