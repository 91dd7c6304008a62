"""The segmentation trainer behind ``tessera train``: the training loop.

One :class:`Trainer` runs a :class:`~training.loop.config.TrainConfig`; its parts are

* **data** (:mod:`training.loop.splits`) -- the training and validation pairs ``data.*`` selects,
  and the mirror-extrapolated overlap-tile patches with the paper's weight map and the
  albumentations pipeline, DataLoader workers seeded by :func:`training.loop.seeding.worker_init_fn`;
* **network** (:mod:`training.loop.network`) -- the classic U-Net or any smp architecture/encoder,
  its encoder optionally started from a local file and frozen for the first
  ``freeze_encoder_epochs`` epochs (-1: throughout), or a bundle's network with ``model.init``;
  Adam or SGD (momentum 0.99 by default);
* **this loop** -- the learning rate constant or poly ``lr * (1 - progress) ** 0.9`` where
  progress is the larger of the step share and the wall-clock share of ``run.max_minutes``
  (validation included, so the rate reaches 0 when the budget ends); loss from
  :mod:`training.loop.losses`; channels_last, and autocast as ``run.precision`` asks (mixed
  precision on CUDA by default, bf16 on the CPU on request; :mod:`training.device`); a moving
  average of the weights with ``optim.ema``; early stopping on ``run.monitor``;
* **validation** (:mod:`training.loop.validation`) -- whole hold-out images through the predictor
  ``tessera predict`` runs, after optional precise BatchNorm statistics and a calibrated decision
  threshold; at the end the best bundle's threshold for each test-time augmentation mode;
* **outputs** (:mod:`training.loop.artifacts`) in ``run.output``: ``best.safetensors`` and
  ``last.safetensors`` bundles with their provenance, ``metrics.csv``/``metrics.json``,
  ``curves.png`` and ``overlays/*.png``, and the resume state beside ``last``
  (:mod:`training.loop.checkpoint`).

Reproducibility: every random generator (python, numpy, torch, the augmentation pipeline, the
DataLoader workers' seeds) is reseeded at the start of each epoch from ``(seed, epoch)``
(:mod:`training.loop.seeding`), and the optimizer state is restored in the parameters' memory layout
(:mod:`training.loop.checkpoint`), so ``resume`` continues exactly as an uninterrupted run would:
bit-identical weights on the CPU with a fixed thread count, with or without worker processes
(tested). The exception: with ``run.max_minutes`` the poly learning rate and the length of the
last epoch follow the wall clock, so such runs do not repeat bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from training.bundle import Bundle, new_bundle_info
from training.device import autocast, resolve_device
from training.inference.predictor import Predictor
from training.loop.artifacts import RunArtifacts, now, provenance, run_description
from training.loop.averaging import WeightAverage
from training.loop.checkpoint import restore, save_state
from training.loop.config import LOWER_IS_BETTER, TrainConfig
from training.loop.losses import build_loss
from training.loop.network import (
    build_network,
    build_optimizer,
    grad_scaler,
    init_source,
    scheduled_lr,
    set_encoder_frozen,
)
from training.loop.seeding import epoch_seed, seed_everything
from training.loop.splits import load_splits, training_loader, training_patches
from training.loop.validation import Validation


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
        self.artifacts = RunArtifacts(self.output)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = resolve_device(config.run.device)
        self.console = Console(stderr=True)
        self.log = log or self.console.print
        self.splits = load_splits(config)
        seed_everything(config.run.seed)
        self.spec, self.model = build_network(config, self.splits.in_channels, self.splits.labels.num_classes, self.log)
        #: The bundle ``model.init`` started from, for the provenance (None: a fresh network).
        self.init_source = init_source(config.model.init) if config.model.init else None
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        self.loss = build_loss(config.loss.name)
        self.patches = training_patches(config, self.splits, self.model.geometry)
        self.validation = Validation(config, self.splits, self.device)
        self.optimizer = build_optimizer(config.optim, self.model)
        self.average = WeightAverage(self.model, config.optim.ema) if config.optim.ema else None
        self.scaler = grad_scaler(self.device, config.run.precision)
        self.info = new_bundle_info(
            self.spec, self.model, list(self.splits.labels.classes), self.splits.normalization, provenance={}, metrics={}
        )
        self.description = run_description(self.command, config, self.splits, self.init_source, self.device)
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
        """The learning rate now (:func:`training.loop.network.scheduled_lr` at :meth:`progress`)."""
        return scheduled_lr(self.config.optim, self.progress())

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
        self.patches.reseed(seed)
        loader = training_loader(self.patches, self.config, self.device)
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

    def predictor(self) -> Predictor:
        """A :class:`training.inference.predictor.Predictor` over :attr:`scored_model` (what ``tessera
        predict`` runs)."""
        self.info.provenance = self._provenance()
        return Predictor(Bundle(model=self.scored_model, info=self.info), device=self.device)

    def validate(self) -> dict[str, float]:
        """The validation metrics now (:meth:`training.loop.validation.Validation.validate`); the
        model goes back to training mode afterwards (a frozen encoder stays frozen)."""
        if not self.splits.val_examples:
            return {}
        try:
            return self.validation.validate(self.model, self.average, self.predictor, self.info)
        finally:
            self.model.train()
            if self._encoder_frozen(max(self.epoch - 1, 0)):
                set_encoder_frozen(self.model, True)

    # ------------------------------------------------------------------ bundles and state
    def _provenance(self) -> dict[str, Any]:
        return provenance(self.description, self.started, self.epoch, self.step, self.elapsed)

    def _save(self, path: Path, row: dict[str, Any]) -> Path:
        """A bundle of :attr:`scored_model` with this epoch's ``row`` as its metrics."""
        self.info.provenance = self._provenance()
        self.info.classes = self.splits.class_names
        return self.artifacts.save(path, self.scored_model, self.info, row)

    def _record(self) -> dict[str, Any]:
        """The loop's state that :meth:`resume` restores."""
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
        average = self.average.model if self.average is not None else None
        record = restore(self.artifacts.last, self.model, self.optimizer, average)
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
        first_epoch = self.epoch
        with progress_bar(r.progress, self.console) as progress:
            stopped = self._stop_reason(first_epoch, stop_after, deadline)
            while stopped is None:
                if self._run_epoch(deadline, progress):
                    stopped = "time"
                elif r.patience and self.bad_epochs >= r.patience:
                    stopped = "early"
                else:
                    stopped = self._stop_reason(first_epoch, stop_after, deadline)
        files = self._finish()
        return TrainResult(
            output=self.output,
            best=self.artifacts.best,
            last=self.artifacts.last,
            history=self.history,
            best_metrics=next((row for row in self.history if row["epoch"] == self.best_epoch), {}),
            stopped=stopped,
            seconds=time.monotonic() - wall_start,
            files=files,
        )

    def _stop_reason(self, first_epoch: int, stop_after: int | None, deadline: float | None) -> str | None:
        """Why the run stops before another epoch (``interrupted``, ``epochs``, ``time``), or None."""
        r = self.config.run
        if stop_after is not None and self.epoch - first_epoch >= stop_after:
            return "interrupted"
        if r.epochs is not None and self.epoch >= r.epochs:
            return "epochs"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        return None

    def _run_epoch(self, deadline: float | None, progress: Progress | None) -> bool:
        """Train one epoch, validate when due, and record it (:meth:`_record_epoch`); returns
        whether the deadline cut the epoch short."""
        r = self.config.run
        task = progress.add_task(f"epoch {self.epoch + 1}", total=self.steps_per_epoch, loss=float("nan")) if progress else None
        epoch_start = time.monotonic()
        train_metrics, cut = self.train_epoch(deadline, progress, task)
        self.epoch += 1
        row: dict[str, Any] = {"epoch": self.epoch, **train_metrics}
        if self.epoch % r.val_every == 0 or cut or self.epoch == r.epochs:
            row.update({f"val_{k}": v for k, v in self.validate().items()})
        row["seconds"] = round(time.monotonic() - epoch_start, 2)
        self._record_epoch(row)
        if progress is not None:
            progress.remove_task(task)
        return cut

    def _record_epoch(self, row: dict[str, Any]) -> None:
        """Add ``row`` to the history; save the best bundle if it improved, the last bundle and the
        resume state always; rewrite the metrics files; log one line."""
        self.history.append(row)
        is_best = self.improved(row)
        if is_best:
            self.best_epoch, self.bad_epochs = self.epoch, 0
            self._save(self.artifacts.best, row)
        else:
            self.bad_epochs += 1
        self._save(self.artifacts.last, row)
        trained = self.model.state_dict() if self.average is not None else None
        save_state(self.artifacts.last, self.optimizer, self._record(), trained)
        self.artifacts.write_history(self.history, self.best_epoch, self.config.run.monitor)
        self.log(_summary(row, is_best))

    def _finish(self) -> dict[str, Path]:
        """The best bundle's thresholds for test-time augmentation and halo; curves and overlays (PNG)."""
        files = self.artifacts.history_files()
        best = self.artifacts.best
        if self.config.run.threshold == "calibrate" and best.is_file():
            thresholds = self.validation.calibrate_tta(best)
            if thresholds:
                self.log("best bundle, thresholds with test-time augmentation: "
                         + "  ".join(f"{mode} {value}" for mode, value in thresholds.items()))
        if self.config.run.halo == "scan" and self.info.geometry.padding == "same" and best.is_file():
            self.log(self.validation.measure_halo(best))
        if self.history:
            files["curves"] = self.artifacts.write_curves(self.history)
        if self.splits.val_examples and self.config.run.overlays and best.is_file():
            files.update(self.artifacts.write_overlays(self.splits.val_examples[: self.config.run.overlays], self.device))
        return files


def progress_bar(enabled: bool, console: Console) -> contextlib.AbstractContextManager[Progress | None]:
    """A rich progress bar with live loss, or a null context when ``run.progress`` is off."""
    if not enabled:
        return contextlib.nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _summary(row: dict[str, Any], best: bool) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts) + ("  [best]" if best else "")


def train(config: TrainConfig, resume: bool = False, command: list[str] | None = None) -> TrainResult:
    """Run ``config`` (see :class:`Trainer`)."""
    return Trainer(config, command=command).fit(resume=resume)
