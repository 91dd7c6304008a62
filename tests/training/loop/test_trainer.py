"""The segmentation trainer on a few cropped ISBI slices with a tiny U-Net (seconds on a CPU)."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support.bundles import TINY_SMP
from tests.support.paths import ISBI
from training.bundle import load_bundle, new_bundle_info, read_bundle_info, save_bundle
from training.data.augment import OffsetDihedral
from training.inference.decision import CALIBRATION_THRESHOLDS
from training.inference.predictor import Predictor
from training.loop.batchnorm import recompute_batchnorm
from training.loop.config import load_config
from training.loop.trainer import Trainer
from training.models import build_model
from training.normalization import Normalization

#: Crop of each slice used (pixels per side) and the slices: two train, one validation.
CROP = 128
SLICES = ("0", "1", "25")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isbi")
    for kind in ("image", "label"):
        (root / kind).mkdir()
        for name in SLICES:
            pixels = np.asarray(Image.open(ISBI / kind / f"{name}.png"))[:CROP, :CROP]
            Image.fromarray(pixels).save(root / kind / f"{name}.png")
    shutil.copy(ISBI / "label" / "classes.yaml", root / "label" / "classes.yaml")
    return root


def tiny(data: Path, output: Path, *overrides: str):
    return load_config(None, [
        f"data.images={data / 'image'}", f"data.masks={data / 'label'}", "data.val=[25]",
        "model.depth=2", "model.width=4", "patch.size=92", "patch.batch_size=2",
        "patch.samples_per_epoch=6", "run.epochs=3", "run.threads=1", "run.progress=false",
        "run.overlays=1", "optim.lr=0.01", "augment.elastic.p=0.5", f"run.output={output}", *overrides,
    ])


def quiet(line: str) -> None:
    pass


def test_trains_and_writes_everything(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny(data, tmp_path / "run"), command=["tessera", "train"], log=quiet)
    result = trainer.fit()
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.stopped == "epochs"
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["train_loss"]) == pytest.approx(losses[2])
    document = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert document["history"][0]["val_pixel_error"] == pytest.approx(result.history[0]["val_pixel_error"])
    for name in ("curves.png", "overlays/25.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The last bundle reloads into a model whose outputs equal the trained one's, bit for bit.
    # (same memory layout on both sides: the predictor runs models channels_last)
    bundle = load_bundle(result.last)
    reloaded = bundle.model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, 92, 92, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), trainer.model(x))
    info = read_bundle_info(result.best)
    assert info.classes == ["membrane", "cell"] and info.geometry.margin == 20
    assert info.provenance["command"] == "tessera train" and info.provenance["seed"] == 0
    assert info.provenance["data"]["train"] == ["0", "1"] and info.provenance["data"]["val"] == ["25"]
    assert info.provenance["config"]["model"]["width"] == 4 and "torch" in info.provenance["versions"]
    assert info.metrics["epoch"] == result.best_metrics["epoch"]
    # Validation went through the Predictor: re-scoring the best bundle gives the logged numbers.
    image = np.asarray(Image.open(data / "image" / "25.png"))
    labels = Predictor(result.best, device="cpu").predict(image).labels
    truth = (np.asarray(Image.open(data / "label" / "25.png")) == 255).astype(np.int64)
    assert np.mean(labels != truth) == pytest.approx(result.best_metrics["val_pixel_error"])


@pytest.mark.parametrize(("workers", "ema"), [(0, 0.0), (1, 0.0), (0, 0.9)])
def test_resume_equals_uninterrupted(data: Path, tmp_path: Path, workers: int, ema: float) -> None:
    overrides = (f"run.workers={workers}", "run.overlays=0", f"optim.ema={ema}", f"run.precise_bn={4 if ema else 0}")
    whole = Trainer(tiny(data, tmp_path / "whole", *overrides), log=quiet).fit()
    first = Trainer(tiny(data, tmp_path / "split", *overrides), log=quiet).fit(stop_after=1)
    assert json.loads((tmp_path / "split" / "last.state.json").read_text())["epoch"] == 1
    lines: list[str] = []
    trainer = Trainer(tiny(data, tmp_path / "split", *overrides), log=lines.append)
    resumed = trainer.fit(resume=True)
    # The second sitting trained epochs 2 and 3 only, on top of the first sitting's epoch 1 ...
    assert [line.split()[1] for line in lines] == ["2", "3"]
    assert resumed.history[0] == first.history[0]
    # ... and ends bit for bit where the uninterrupted run ends: losses, weights, BatchNorm
    # statistics, optimizer moments (kept in the parameters' channels_last layout).
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in whole.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == untimed
    for name in ("last.safetensors", "last.state.safetensors"):
        expected, got = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
        assert expected.keys() == got.keys()
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    for parameter in trainer.model.parameters():
        for value in trainer.optimizer.state[parameter].values():
            assert value.dim() == 0 or value.stride() == parameter.stride()


def test_resume_without_state_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="last.safetensors: missing, cannot resume"):
        Trainer(tiny(data, tmp_path / "none"), log=quiet).fit(resume=True)


def test_poly_rate_follows_the_wall_clock_of_a_time_budget(data: Path, tmp_path: Path) -> None:
    # 150 s before a resume and 150 s since, no training step yet: half of a 10-minute budget.
    trainer = Trainer(tiny(data, tmp_path / "clock", "run.max_minutes=10"), log=quiet)
    assert trainer.progress() == 0 and trainer.learning_rate() == pytest.approx(0.01)
    trainer.wall = 150.0
    trainer._wall_start = time.monotonic() - 150.0
    assert trainer.elapsed == 0
    assert trainer.progress() == pytest.approx(0.5, abs=0.01)
    assert trainer.learning_rate() == pytest.approx(0.01 * 0.5**0.9, rel=0.02)


def test_early_stopping(data: Path, tmp_path: Path) -> None:
    # A learning rate too small to change a prediction: the monitored Dice cannot improve.
    config = tiny(data, tmp_path / "early", "run.epochs=10", "run.patience=1", "optim.lr=1e-12",
                  "optim.schedule=constant", "run.overlays=0")
    result = Trainer(config, log=quiet).fit()
    assert result.stopped == "early" and len(result.history) == 2
    assert result.best_metrics["epoch"] == 1


def test_frozen_encoder_does_not_change(data: Path, tmp_path: Path) -> None:
    config = tiny(data, tmp_path / "frozen", "run.epochs=1", "model.freeze_encoder_epochs=-1", "run.overlays=0")
    trainer = Trainer(config, log=quiet)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    encoder = [k for k in before if k.startswith(("stem.", "down."))]
    decoder = [k for k in before if k.startswith(("up.", "head.")) and before[k].is_floating_point()]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_calibrated_threshold_is_chosen_on_training_images_and_recorded(data: Path, tmp_path: Path) -> None:
    # The Rand error picks the epoch, pixel error the threshold (run.calibrate_by).
    trainer = Trainer(tiny(data, tmp_path / "cal", "run.threshold=calibrate", "run.monitor=rand_error",
                           "run.calibrate_by=pixel_error", "run.epochs=2", "run.overlays=0", "run.precise_bn=4"),
                      log=quiet)
    assert trainer.validation.calibration_metric == "pixel_error"
    result = trainer.fit()
    # Precise BatchNorm: the saved statistics are the exact ones of the saved weights over the
    # run's clean patches (recomputing them changes nothing), not the training-time averages.
    saved = load_bundle(result.last).model.train()
    before = {k: v.clone() for k, v in saved.state_dict().items() if "running" in k}
    trainer.validation.clean_patches.reseed(0)
    patches = [trainer.validation.clean_patches[i][0] for i in range(4)]
    recompute_batchnorm(saved, [torch.stack(patches[:2]), torch.stack(patches[2:])], torch.device("cpu"))
    after = {k: v for k, v in saved.state_dict().items() if "running" in k}
    assert all(torch.allclose(before[k], after[k], rtol=1e-5, atol=1e-6) for k in before)
    thresholds = [row["val_threshold"] for row in result.history]
    assert all(0 < t < 1 for t in thresholds)
    info = read_bundle_info(result.best)
    assert info.threshold == result.best_metrics["val_threshold"]
    assert read_bundle_info(result.last).threshold == thresholds[-1]
    # The threshold is the best one on the training images (0 and 1), not on the validation image.

    last = Predictor(result.last, device="cpu", threshold=None)
    train = [(np.asarray(Image.open(data / "image" / f"{n}.png")),
              (np.asarray(Image.open(data / "label" / f"{n}.png")) == 255)) for n in ("0", "1")]
    probs = [last.predict(image, probabilities=True).probabilities[1] for image, _ in train]
    errors = {t: sum(np.sum((p >= t) != truth) for p, (_, truth) in zip(probs, train)) for t in CALIBRATION_THRESHOLDS}
    assert errors[thresholds[-1]] == min(errors.values())
    # Validation scored with that threshold: re-scoring the bundle gives the logged figure.
    image = np.asarray(Image.open(data / "image" / "25.png"))
    truth = (np.asarray(Image.open(data / "label" / "25.png")) == 255).astype(np.int64)
    labels = Predictor(result.last, device="cpu").predict(image).labels
    assert np.mean(labels != truth) == pytest.approx(result.history[-1]["val_pixel_error"])


def test_best_bundle_is_calibrated_again_for_test_time_augmentation(data: Path, tmp_path: Path) -> None:

    result = Trainer(tiny(data, tmp_path / "tta", "run.threshold=calibrate", "run.monitor=pixel_error",
                          "run.epochs=1", "run.overlays=0"), log=quiet).fit()
    info = read_bundle_info(result.best)
    assert set(info.tta_thresholds) == {"flips", "d4"}
    train = [(np.asarray(Image.open(data / "image" / f"{n}.png")),
              (np.asarray(Image.open(data / "label" / f"{n}.png")) == 255)) for n in ("0", "1")]
    for mode, threshold in info.tta_thresholds.items():
        predictor = Predictor(result.best, device="cpu", tta=mode)
        assert predictor.threshold == threshold  # the bundle's threshold for this mode
        probs = [Predictor(result.best, device="cpu", tta=mode, threshold=None).predict(image, probabilities=True)
                 .probabilities[1] for image, _ in train]
        errors = {t: sum(np.sum((p >= t) != truth) for p, (_, truth) in zip(probs, train)) for t in CALIBRATION_THRESHOLDS}
        assert errors[threshold] == min(errors.values())
    assert Predictor(result.best, device="cpu").threshold == info.threshold
    # A model that never saw flips or turns gets no thresholds for views it cannot read.
    plain = Trainer(tiny(data, tmp_path / "plain", "run.threshold=calibrate", "run.epochs=1", "run.overlays=0",
                         "augment.flip=false", "augment.rotate90=false"), log=quiet).fit()
    assert read_bundle_info(plain.best).tta_thresholds == {}


def test_calibrating_a_three_class_task_is_refused(data: Path, tmp_path: Path) -> None:
    three = tmp_path / "three"
    for kind in ("image", "label"):
        (three / kind).mkdir(parents=True)
        for name in SLICES:
            pixels = np.asarray(Image.open(data / kind / f"{name}.png"))
            if kind == "label":  # class indices 0, 1 and a patch of 2
                pixels = (pixels == 255).astype(np.uint8)
                pixels[:8, :8] = 2
            Image.fromarray(pixels).save(three / kind / f"{name}.png")
    config = load_config(None, [f"data.images={three / 'image'}", f"data.masks={three / 'label'}", "data.val=[25]",
                                "model.depth=2", "model.width=4", "patch.size=92", "run.threshold=calibrate",
                                f"run.output={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="calibrate needs a two-class task; the masks have 3 classes"):
        Trainer(config, log=quiet)


def test_bfloat16_steps_on_the_cpu_train_and_save_float32(data: Path, tmp_path: Path) -> None:
    """``run.precision=bfloat16``: the training convolutions run in bf16 (also on the CPU), the
    loss stays close to a float32 run's, and the saved bundle is float32."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        trainer = Trainer(tiny(data, tmp_path / precision, "run.epochs=1", "run.overlays=0",
                               f"run.precision={precision}"), log=quiet)
        seen: set[torch.dtype] = set()
        trainer.model.head.register_forward_hook(lambda module, args, out, seen=seen: seen.add(out.dtype))
        runs[precision] = trainer.fit(), seen
    (fp32, fp32_dtypes), (bf16, bf16_dtypes) = runs["float32"], runs["bfloat16"]
    assert fp32_dtypes == {torch.float32}
    assert torch.bfloat16 in bf16_dtypes  # training steps; validation runs float32
    losses = fp32.history[0]["train_loss"], bf16.history[0]["train_loss"]
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.05)
    tensors = load_file(str(bf16.last))
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}


def test_precision_is_checked(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run.precision: must be one of auto, float32, bfloat16, float16"):
        tiny(data, tmp_path / "bad", "run.precision=half")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="precision 'float16' needs a CUDA device"):
            Trainer(tiny(data, tmp_path / "fp16", "run.precision=float16"), log=quiet)


def test_label_offset_reaches_the_augmentation(data: Path, tmp_path: Path) -> None:

    trainer = Trainer(tiny(data, tmp_path / "offset", "data.label_offset=[-0.6, -0.2]", "augment.flip.p=0.5"),
                      log=quiet)
    dihedral = [t for t in trainer.patches.augmentation.compose.transforms if isinstance(t, OffsetDihedral)]
    assert len(dihedral) == 1 and dihedral[0].label_offset == (-0.6, -0.2)
    assert trainer.patches.reach == trainer.patches.augmentation.reach(trainer.patches.input_size) > 0


def test_weight_average_is_what_validation_scores_and_bundles_hold(data: Path, tmp_path: Path) -> None:
    """``optim.ema``: bundles hold the moving average (precise BN re-estimated for it), not the
    live weights, and the logged validation numbers are the average's."""
    trainer = Trainer(tiny(data, tmp_path / "ema", "optim.ema=0.9", "run.precise_bn=4", "run.epochs=2",
                           "run.overlays=0"), log=quiet)
    result = trainer.fit()
    saved = load_file(str(result.last))
    average, live = trainer.average.model.state_dict(), trainer.model.state_dict()
    assert [k for k in saved if not torch.equal(saved[k], average[k])] == []
    weights = [k for k, _ in trainer.model.named_parameters()]
    assert all(not torch.equal(saved[k], live[k]) for k in weights)
    image = np.asarray(Image.open(data / "image" / "25.png"))
    labels = Predictor(result.last, device="cpu").predict(image).labels
    truth = (np.asarray(Image.open(data / "label" / "25.png")) == 255).astype(np.int64)
    assert np.mean(labels != truth) == pytest.approx(result.history[-1]["val_pixel_error"])


def test_resume_needs_the_runs_own_weight_averaging(data: Path, tmp_path: Path) -> None:
    Trainer(tiny(data, tmp_path / "run", "run.epochs=1", "run.overlays=0"), log=quiet).fit()
    with pytest.raises(ValueError, match="saved without optim.ema"):
        Trainer(tiny(data, tmp_path / "run", "optim.ema=0.9"), log=quiet).fit(resume=True)
    with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
        tiny(data, tmp_path / "bad", "optim.ema=1")


def test_same_padded_runs_end_with_the_halo_measured_on_validation_images(data: Path, tmp_path: Path) -> None:
    """``run.halo: scan`` (the default): the best bundle of an smp run carries the halo scan, and
    its geometry's halo is the default preset's; ``impulse`` keeps the impulse-response radius."""
    torch.manual_seed(0)
    model = build_model(TINY_SMP).eval()
    init = save_bundle(tmp_path / "init.safetensors", model,
                       new_bundle_info(TINY_SMP, model, ["membrane", "cell"], Normalization()))
    lines: list[str] = []
    common = (f"model.init={init}", "run.epochs=1", "run.overlays=0", "patch.size=64")
    Trainer(tiny(data, tmp_path / "scan", *common), log=lines.append).fit()
    info = read_bundle_info(tmp_path / "scan" / "best.safetensors")
    presets = info.halo["presets"]
    assert info.halo["pixels"] == 1024 * 1024  # the 128 px validation slice laid into a 1024² mosaic
    assert presets["default"]["agreement"] >= 0.999 and info.geometry.halo == presets["default"]["halo"]
    assert presets["exact"]["halo"] >= presets["default"]["halo"] and info.halo["impulse"] > 0
    assert any("halo from agreement with the whole-image pass: default" in line for line in lines)
    Trainer(tiny(data, tmp_path / "impulse", *common, "run.halo=impulse"), log=quiet).fit()
    kept = read_bundle_info(tmp_path / "impulse" / "best.safetensors")
    assert kept.halo == {} and kept.geometry.halo == read_bundle_info(init).geometry.halo
