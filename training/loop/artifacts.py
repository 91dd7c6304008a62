"""What a training run leaves in ``run.output``.

* ``best.safetensors`` and ``last.safetensors`` -- bundles whose provenance records the command,
  config, data, seed, times and package versions, and whose metrics are the epoch's;
* ``metrics.csv`` and ``metrics.json`` -- one row per epoch (rewritten after every epoch);
* ``curves.png`` and ``overlays/<stem>.png`` -- written at the end of the run
  (:mod:`training.loop.plots`).

The resume state beside ``last`` is :mod:`training.loop.checkpoint`'s.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.bundle import BundleInfo, load_bundle, save_bundle
from training.data.dataset import Example
from training.inference.predictor import Predictor
from training.loop.config import TrainConfig
from training.loop.plots import plot_curves, plot_overlay
from training.loop.splits import Splits

#: File names inside the output folder.
BEST, LAST = "best.safetensors", "last.safetensors"
CSV_NAME, JSON_NAME, CURVES_NAME, OVERLAYS_DIR = "metrics.csv", "metrics.json", "curves.png", "overlays"
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
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_description(
    command: str, config: TrainConfig, splits: Splits, init: dict[str, str] | None, device: torch.device
) -> dict[str, Any]:
    """The provenance that stays fixed over a run: how it was started and on which data."""
    return {
        "command": command,
        "config": config.to_dict(),
        "data": {
            "images": str(config.data.images),
            "masks": str(config.data.masks),
            "train": splits.train_folder.names,
            "val": splits.val_folder.names if splits.val_folder is not None else [],
            "labels": splits.labels.to_dict(),
        },
        "init": init,
        "seed": config.run.seed,
        "device": str(device),
    }


def provenance(description: dict[str, Any], started: str, epoch: int, step: int, elapsed: float) -> dict[str, Any]:
    """A bundle's provenance: :func:`run_description`, then when and how far the run had got
    (``elapsed``: training seconds, validation excluded)."""
    return {
        **description,
        "started": started,
        "saved": now(),
        "epoch": epoch,
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "versions": versions(),
    }


class RunArtifacts:
    """The files of one run in its output folder (see the module docstring)."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)

    @property
    def best(self) -> Path:
        return self.output / BEST

    @property
    def last(self) -> Path:
        return self.output / LAST

    def save(self, path: Path, model: nn.Module, info: BundleInfo, metrics: dict[str, Any]) -> Path:
        """A bundle of ``model`` at ``path`` with the epoch's ``metrics`` (floats to 6 decimals)."""
        info.metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        return save_bundle(path, model, info)

    def write_history(self, history: list[dict[str, Any]], best_epoch: int, monitor: str) -> None:
        """``metrics.csv`` (the union of the rows' keys as columns) and ``metrics.json``."""
        keys: list[str] = []
        for row in history:
            keys.extend(k for k in row if k not in keys)
        with open(self.output / CSV_NAME, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
        document = {"history": history, "best_epoch": best_epoch, "monitor": monitor}
        (self.output / JSON_NAME).write_text(json.dumps(document, indent=1))

    def history_files(self) -> dict[str, Path]:
        return {"csv": self.output / CSV_NAME, "json": self.output / JSON_NAME}

    def write_curves(self, history: list[dict[str, Any]]) -> Path:
        """``curves.png``: loss and validation metrics by epoch."""
        return plot_curves(history, self.output / CURVES_NAME)

    def write_overlays(self, examples: Sequence[Example], device: torch.device) -> dict[str, Path]:
        """``overlays/<stem>.png`` for ``examples``: image, truth and the best bundle's prediction
        (errors in red; ignored pixels shown as predicted)."""
        predictor = Predictor(load_bundle(self.best), device=device)
        files: dict[str, Path] = {}
        for example in examples:
            labels = predictor.predict(example.image).labels
            target = np.where(example.target < 0, labels, example.target)
            path = self.output / OVERLAYS_DIR / f"{example.name}.png"
            files[f"overlay_{example.name}"] = plot_overlay(example.image, target, labels, path, example.name)
        return files
