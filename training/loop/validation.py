"""Validation during training: precise BatchNorm statistics, the decision threshold, the scores.

Each validation predicts the hold-out images whole through
:class:`training.inference.predictor.Predictor`, the very code ``tessera predict`` runs, and scores
them with :func:`training.loop.evaluate.score` (pooled over images). Before it, optionally:

* ``run.precise_bn`` -- BatchNorm statistics re-estimated (:mod:`training.loop.batchnorm`) from
  that many un-augmented training patches, the same ones at every validation;
* ``run.threshold: calibrate`` -- the decision threshold chosen on
  :func:`~training.loop.evaluate.calibration_subset` of the training images
  (:mod:`training.inference.decision`) by ``run.calibrate_by``.

At the end of a run the best bundle's threshold is calibrated again for each test-time augmentation
mode the model trained for (:meth:`Validation.calibrate_tta`, ``tta_thresholds`` in the bundle),
and a same-padded network's halo is measured from agreement with the whole-image pass
(:meth:`Validation.measure_halo`, ``run.halo: scan``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from training.bundle import BundleInfo, load_bundle, save_bundle
from training.data.patches import UNIFORM_WEIGHTS, PatchDataset
from training.inference.halo import measure_bundle_halo
from training.inference.predictor import Predictor, tta_caveat
from training.loop.averaging import WeightAverage
from training.loop.batchnorm import recompute_batchnorm
from training.loop.config import TrainConfig
from training.loop.evaluate import (
    calibrate,
    calibrate_bundle,
    calibration_subset,
    score,
)
from training.loop.splits import Splits

#: Test-time augmentation modes the best bundle's threshold is calibrated for at the end of a run.
TTA_CALIBRATED = ("flips", "d4")


class Validation:
    """Validates one run's model on its hold-out images.

    Args:
        config: the run's configuration (``run.precise_bn``, ``run.threshold``, ``run.calibrate_by``).
        splits: the run's training and validation images.
        device: where the model runs.
    """

    def __init__(self, config: TrainConfig, splits: Splits, device: torch.device) -> None:
        self.config = config
        self.splits = splits
        self.device = device
        #: The un-augmented training patches precise BatchNorm uses (drawn at the first use).
        self.clean_patches: PatchDataset | None = None

    @property
    def calibration_metric(self) -> str:
        """What ``run.threshold: calibrate`` chooses the threshold by: ``run.calibrate_by``, else the
        monitor (pixel error when that is the loss)."""
        r = self.config.run
        return r.calibrate_by or (r.monitor if r.monitor != "loss" else "pixel_error")

    def validate(
        self, model: nn.Module, average: WeightAverage | None, predictor: Callable[[], Predictor], info: BundleInfo
    ) -> dict[str, float]:
        """Score every validation image, whole, through ``predictor()`` (a predictor over the
        weights being validated: the average's with ``optim.ema``, else ``model``'s); first, as
        configured, recompute BatchNorm statistics and choose the threshold (set in ``info``). The
        caller puts the model back into training mode."""
        calibrated: dict[str, float] = {}
        if self.config.run.precise_bn:
            self.recompute_batchnorm(model, average)
        if self.config.run.threshold == "calibrate":
            info.threshold = self.calibrate(predictor())
            calibrated["threshold"] = info.threshold
        chosen = predictor()
        predictions = [chosen.predict(e.image).labels for e in self.splits.val_examples]
        targets = [e.target for e in self.splits.val_examples]
        return {**score(predictions, targets, self.splits.class_names, self.splits.interior_class), **calibrated}

    def recompute_batchnorm(self, model: nn.Module, average: WeightAverage | None) -> None:
        """Precise BatchNorm statistics of the validated weights (``average.model`` with a weight
        average, which first takes ``model``'s train/eval modes, else ``model``) from the clean
        patches (:meth:`clean_batches`)."""
        batches = self.clean_batches(model)
        if average is not None:
            average.follow_modes(model)
        recompute_batchnorm(average.model if average is not None else model, batches, self.device)

    def clean_batches(self, model: nn.Module) -> Iterator[torch.Tensor]:
        """Batches of ``run.precise_bn`` un-augmented training patches for ``model``'s geometry,
        the same ones at every call (drawn like training patches with the dataset's default
        foreground share)."""
        c = self.config
        if self.clean_patches is None:
            self.clean_patches = PatchDataset(
                self.splits.train_examples, model.geometry, c.patch.size, self.splits.labels.num_classes,
                normalization=self.splits.normalization, augmentation=None, weights=UNIFORM_WEIGHTS,
                samples_per_epoch=c.run.precise_bn, seed=c.run.seed,
            )
        self.clean_patches.reseed(c.run.seed)
        batch = c.patch.batch_size
        patches = [self.clean_patches[i][0] for i in range(len(self.clean_patches))]
        return (torch.stack(patches[i : i + batch]) for i in range(0, len(patches), batch))

    def calibrate(self, predictor: Predictor) -> float:
        """The decision threshold that scores best on :attr:`calibration_metric` over
        :func:`~training.loop.evaluate.calibration_subset` of the training images, predicted
        whole by ``predictor``."""
        examples = calibration_subset(self.splits.train_examples)
        threshold, _ = calibrate(predictor, examples, self.calibration_metric, self.splits.interior_class)
        return threshold

    def calibrate_tta(self, path: Path) -> dict[str, float]:
        """Calibrate the bundle at ``path`` again for each test-time augmentation mode of
        :data:`TTA_CALIBRATED` the model trained for, as :meth:`calibrate` does, and record the
        thresholds in it (``tta_thresholds``)."""
        bundle = load_bundle(path)
        modes = [mode for mode in TTA_CALIBRATED if tta_caveat(bundle.info, mode) is None]
        examples = calibration_subset(self.splits.train_examples)
        thresholds, _ = calibrate_bundle(
            bundle, examples, self.calibration_metric, self.splits.interior_class, modes, device=self.device
        )
        save_bundle(path, bundle.model, bundle.info)
        return thresholds

    def measure_halo(self, path: Path) -> str:
        """Measure the halo of the same-padded bundle at ``path`` on the validation images
        (training images when there are none) and store it (:mod:`training.inference.halo`);
        returns a line for the log: the halo and agreement of each preset."""
        examples = self.splits.val_examples or self.splits.train_examples
        bundle = measure_bundle_halo(load_bundle(path), [e.image for e in examples], device=self.device)
        save_bundle(path, bundle.model, bundle.info)
        presets = bundle.info.halo["presets"]
        return "best bundle, halo from agreement with the whole-image pass: " + "  ".join(
            f"{name} {p['halo']} px ({p['agreement']:.4%})" for name, p in presets.items())
