"""Accuracy benchmark on ISBI 2012 hold-out slices 25-29. Prints ONE JSON line.

(a) the default recipe (``configs/isbi2012.yaml``) trained from scratch for ``--minutes`` of wall
    time, and in the same run, with the same budget, a plain segmentation-models-pytorch loop as
    the reference: Unet-resnet18, random 256x256 crops, flips and 90-degree rotations, BCE + Dice,
    Adam 1e-3, batch 8. Only figures from one run compare (the machine is shared).
(b) the shipped model (``training/assets/default.safetensors``).
Every model is scored through the same Predictor and metrics (``training.loop.evaluate``): pixel error,
membrane Dice, adapted Rand error; the recipe and the shipped model also with test-time
augmentation (``tta_d4``: 8 flips and turns, each corrected for the labels' offset). Also: the trainer's samples per second over a plain PyTorch loop
on the same model, patch size, batch and precision (pre-made tensors, no data pipeline) -- the data pipeline
and augmentation keep the model busy when the ratio is near or above 1.

    .venv/bin/python bench/accuracy.py --minutes 10 --threads 1

One torch thread is how the recipe trains on this 2-core machine: its DataLoader worker gets the
other core. With ``--threads 2`` the worker takes CPU from the model (trainer over plain loop 0.85
against 1.00, docs/training.md "Accuracy benchmark").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.bundle import DEFAULT_BUNDLE, Bundle, new_bundle_info  # noqa: E402
from training.data.dataset import ISBI_HOLDOUT, ISBI_TRAIN, isbi2012  # noqa: E402
from training.device import autocast  # noqa: E402
from training.loop.config import load_config  # noqa: E402
from training.loop.evaluate import evaluate_bundle  # noqa: E402
from training.loop.losses import build_loss  # noqa: E402
from training.loop.trainer import Trainer  # noqa: E402
from training.models import build_model  # noqa: E402
from training.normalization import Normalization  # noqa: E402

RECIPE = ROOT / "configs" / "isbi2012.yaml"
#: The test-time augmentation also scored for the recipe and the shipped model (same threshold).
TTA = "d4"
#: The reference loop's settings (docs/training.md, "Accuracy benchmark").
REF_SPEC = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 1, "num_classes": 1}
REF_CROP, REF_BATCH, REF_LR = 256, 8, 1e-3


def headline(result: dict) -> dict:
    m = result["metrics"]
    return {"pixel_error": round(m["pixel_error"], 4), "dice_membrane": round(m["dice_membrane"], 4),
            "rand_error": round(m["rand_error"], 4)}


def recipe(minutes: float, threads: int, output: Path) -> dict:
    config = load_config(RECIPE, [f"run.max_minutes={minutes}", f"run.threads={threads}", f"run.output={output}",
                                  "run.progress=false", "run.overlays=0"])
    trainer = Trainer(config, command=["bench/accuracy.py"], log=lambda line: None)
    result = trainer.fit()
    scored = evaluate_bundle(result.best, isbi2012(ISBI_HOLDOUT), device="cpu")
    with_tta = evaluate_bundle(result.best, isbi2012(ISBI_HOLDOUT), device="cpu", tta=TTA)
    return {**headline(scored), "epochs": len(result.history), "seconds": round(result.seconds),
            f"tta_{TTA}": headline(with_tta)}


def reference(minutes: float, seed: int = 0) -> dict:
    """The plain smp loop; scored through a bundle-less Predictor on the live model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    examples = isbi2012(ISBI_TRAIN).load_all()
    inputs = [Normalization.apply(e.image, *Normalization().statistics(e.image))[0] for e in examples]
    targets = [(e.target == 1).astype(np.float32) for e in examples]  # positive class: cell (index 1)
    model = build_model(REF_SPEC)
    optimizer = torch.optim.Adam(model.parameters(), lr=REF_LR)
    loss_fn = build_loss("dice_ce")  # one logit: binary cross-entropy + Dice
    deadline = time.monotonic() + 60 * minutes
    steps = 0
    model.train()
    while time.monotonic() < deadline:
        xs, ys = [], []
        for _ in range(REF_BATCH):
            k = rng.integers(len(inputs))
            y0, x0 = rng.integers(0, inputs[k].shape[0] - REF_CROP + 1, 2)
            x = inputs[k][y0 : y0 + REF_CROP, x0 : x0 + REF_CROP]
            y = targets[k][y0 : y0 + REF_CROP, x0 : x0 + REF_CROP]
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y = np.rot90(x, turns), np.rot90(y, turns)
            if flip:
                x, y = x[:, ::-1], y[:, ::-1]
            xs.append(x.copy())
            ys.append(y.copy())
        batch = torch.from_numpy(np.stack(xs))[:, None]
        target = torch.from_numpy(np.stack(ys)).long()
        optimizer.zero_grad()
        loss_fn(model(batch), target).backward()
        optimizer.step()
        steps += 1
    info = new_bundle_info(REF_SPEC, model, ["membrane", "cell"], Normalization())
    scored = evaluate_bundle(Bundle(model=model.eval(), info=info), isbi2012(ISBI_HOLDOUT), device="cpu")
    return {**headline(scored), "steps": steps}


def speed(threads: int, output: Path) -> dict:
    """Trainer samples/s (patches, weight maps, augmentation, step) over a plain loop on tensors.

    The trainer is timed over one whole epoch of the recipe (after a one-step warm-up epoch),
    starting its DataLoader worker as every real epoch does; the plain loop over as many steps."""
    config = load_config(RECIPE, [f"run.threads={threads}", f"run.output={output}", "run.progress=false", "run.epochs=1"])
    trainer = Trainer(config, log=lambda line: None)
    batch, steps = config.patch.batch_size, trainer.steps_per_epoch
    samples = trainer.patches.samples_per_epoch
    trainer.patches.samples_per_epoch = batch  # warm-up epoch of one step
    trainer.train_epoch(None)
    trainer.patches.samples_per_epoch = samples
    start = time.monotonic()
    trainer.train_epoch(None)
    trainer_rate = samples / (time.monotonic() - start)
    model = build_model(trainer.spec).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = build_loss(config.loss.name)
    size, out = config.patch.size, model.geometry.output_size(config.patch.size)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, out, out))
    w = torch.ones(batch, out, out)
    for step in range(steps + 1):
        if step == 1:
            start = time.monotonic()
        optimizer.zero_grad()
        with autocast(trainer.device, config.run.precision):  # the trainer's precision
            logits = model(x)
        loss_fn(logits.float(), y, w).backward()
        optimizer.step()
    plain_rate = steps * batch / (time.monotonic() - start)
    return {"trainer_samples_per_s": round(trainer_rate, 3), "plain_samples_per_s": round(plain_rate, 3),
            "ratio": round(trainer_rate / plain_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each model in (a)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every model (default: 1)")
    parser.add_argument("--skip-a", action="store_true", help="only (b) and the speed ratio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    line: dict = {"bench": "accuracy", "minutes": args.minutes, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_a:
            line["recipe"] = recipe(args.minutes, args.threads, Path(tmp) / "recipe")
            line["reference"] = reference(args.minutes)
            line["recipe_beats_reference"] = all(
                (line["recipe"][k] < line["reference"][k]) if k != "dice_membrane" else
                (line["recipe"][k] > line["reference"][k]) for k in ("pixel_error", "dice_membrane", "rand_error"))
        line["shipped"] = headline(evaluate_bundle(DEFAULT_BUNDLE, isbi2012(ISBI_HOLDOUT), device="cpu"))
        line["shipped"][f"tta_{TTA}"] = headline(evaluate_bundle(DEFAULT_BUNDLE, isbi2012(ISBI_HOLDOUT), device="cpu",
                                                                 tta=TTA))
        line["speed"] = speed(args.threads, Path(tmp) / "speed")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
