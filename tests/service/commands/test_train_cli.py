"""``tessera train``, ``tessera evaluate`` and ``tessera train-classifier`` from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from service.cli import build_parser, main
from tests.support.paths import ISBI
from training.bundle import file_sha256, read_bundle_info
from training.inference.decision import CALIBRATION_THRESHOLDS
from training.inference.predictor import Predictor


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isbi_cli")
    for kind in ("image", "label"):
        (root / kind).mkdir()
        for name in ("3", "26"):
            pixels = np.asarray(Image.open(ISBI / kind / f"{name}.png"))[:100, :100]
            Image.fromarray(pixels).save(root / kind / f"{name}.png")
    shutil.copy(ISBI / "label" / "classes.yaml", root / "label" / "classes.yaml")
    config = root / "tiny.yaml"
    config.write_text(
        "data: {images: image, masks: label, val: ['26']}\n"
        "model: {depth: 2, width: 4}\n"
        "patch: {size: 92, batch_size: 2, samples_per_epoch: 4}\n"
        "run: {epochs: 2, threads: 1, overlays: 1}\n"
    )
    return root


def test_subcommand_names() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "train-classifier", "evaluate"} <= set(choices)


def test_train_then_evaluate(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, export = tmp_path / "run", tmp_path / "model.safetensors"
    code = main(["train", "--config", str(data / "tiny.yaml"), "--output", str(out), "--no-progress",
                 "--set", "optim.lr=0.01", "--seed", "3", "--export", str(export)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and summary["stopped"] == "epochs"
    assert export.read_bytes() == (out / "best.safetensors").read_bytes()
    info = read_bundle_info(export)
    assert info.provenance["seed"] == 3 and info.provenance["config"]["optim"]["lr"] == 0.01
    assert (out / "metrics.csv").is_file() and (out / "curves.png").is_file()
    code = main(["evaluate", str(export), "--images", str(data / "image"), "--masks", str(data / "label"),
                 "--select", "26", "--overlays", str(tmp_path / "ov"), "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["pixel_error"] == pytest.approx(summary["best_metrics"]["val_pixel_error"])
    assert report["metrics"]["rand_error"] == pytest.approx(summary["best_metrics"]["val_rand_error"])
    assert (tmp_path / "ov" / "26.png").is_file()
    # --threshold: every pixel is class 1 at threshold 0 (ISBI: cell; membrane pixels are wrong)
    code = main(["evaluate", str(export), "--images", str(data / "image"), "--masks", str(data / "label"),
                 "--select", "26", "--device", "cpu", "--threshold", "0"])
    assert code == 0
    membrane_share = float(np.mean(np.asarray(Image.open(data / "label" / "26.png")) == 0))
    assert json.loads(capsys.readouterr().out)["metrics"]["pixel_error"] == pytest.approx(membrane_share)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["--set", "model.arch=smp.Nope:resnet18", "--epochs", "1"], "cannot build smp Nope"),
        (["--set", "data.val=['99']"], "'99', which is not a stem"),
        (["--export", "model.pt"], "bundle files end in .safetensors"),
        (["--init", "absent.safetensors"], "absent.safetensors: no such bundle file"),
        (["--init", "default", "--set", "model.encoder_weights=e.safetensors"],
         "model.init / model.encoder_weights: give one"),
    ],
)
def test_train_errors_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   arguments: list[str], message: str) -> None:
    code = main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "r"), *arguments])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("tessera train: error:")
    assert not (tmp_path / "r" / "best.safetensors").exists()


def _conv_weights(bundle: Path) -> dict[str, torch.Tensor]:
    """A bundle's weight tensors (BatchNorm running statistics left out: training moves them)."""
    return {k: v for k, v in load_file(str(bundle)).items() if "running" not in k and "num_batches" not in k}


def test_init_fine_tunes_a_bundle(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = tmp_path / "start.safetensors"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "a"), "--no-progress",
                 "--epochs", "1", "--seed", "1", "--export", str(start)]) == 0
    capsys.readouterr()
    # The network is the bundle's (depth 2, width 4) whatever model.* says; a step at lr 1e-12 leaves
    # its weights where they were, so they must be the bundle's, not a fresh initialisation.
    tuned = tmp_path / "b" / "best.safetensors"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "b"), "--no-progress",
                 "--epochs", "1", "--seed", "2", "--init", str(start), "--set", "model.width=32",
                 "--set", "optim.lr=1e-12"]) == 0
    assert "model.init: the network and weights of" in capsys.readouterr().err
    info = read_bundle_info(tuned)
    assert info.spec == read_bundle_info(start).spec
    assert info.provenance["init"] == {"from": str(start.resolve()), "sha256": file_sha256(start)}
    before, after = _conv_weights(start), _conv_weights(tuned)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0, msg=key)
    fresh = tmp_path / "fresh" / "best.safetensors"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "fresh"), "--no-progress",
                 "--epochs", "1", "--seed", "2", "--set", "optim.lr=1e-12"]) == 0
    assert any(not torch.allclose(_conv_weights(fresh)[k], before[k]) for k in before)


def test_init_with_other_classes_restarts_only_the_output_layer(data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    three = tmp_path / "three"
    shutil.copytree(data / "image", three / "image")
    (three / "label").mkdir()
    for name in ("3", "26"):  # membrane 0, cells split into two classes by image brightness
        label = np.asarray(Image.open(data / "label" / f"{name}.png")) > 0
        bright = np.asarray(Image.open(data / "image" / f"{name}.png")) > 140
        Image.fromarray((label * (1 + bright)).astype(np.uint8)).save(three / "label" / f"{name}.png")
    start = tmp_path / "start.safetensors"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "a"), "--no-progress",
                 "--epochs", "1", "--export", str(start)]) == 0
    capsys.readouterr()
    out = tmp_path / "b"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--images", str(three / "image"),
                 "--masks", str(three / "label"), "--output", str(out), "--no-progress", "--epochs", "1",
                 "--init", str(start), "--set", "optim.lr=1e-12", "--set", "run.threshold=argmax"]) == 0
    assert "tensors of the output layer start fresh (3 classes)" in capsys.readouterr().err
    info = read_bundle_info(out / "best.safetensors")
    assert info.spec == {**read_bundle_info(start).spec, "num_classes": 3} and len(info.classes) == 3
    before, after = _conv_weights(start), _conv_weights(out / "best.safetensors")
    restarted = sorted(k for k in before if before[k].shape != after[k].shape)
    assert restarted and all(k.startswith(restarted[0].rsplit(".", 1)[0]) for k in restarted)
    for key in before.keys() - set(restarted):
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0, msg=key)


def test_init_needs_the_same_image_channels(data: Path, tmp_path: Path, tiny_bundle: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rgb = tmp_path / "rgb"
    shutil.copytree(data / "label", rgb / "label")
    (rgb / "image").mkdir()
    for name in ("3", "26"):  # colour (unequal channels: gray-looking RGB is read as gray)
        gray = np.asarray(Image.open(data / "image" / f"{name}.png"))
        Image.fromarray(np.stack([gray, gray // 2, 255 - gray], axis=-1)).save(rgb / "image" / f"{name}.png")
    code = main(["train", "--config", str(data / "tiny.yaml"), "--images", str(rgb / "image"),
                 "--masks", str(rgb / "label"), "--output", str(tmp_path / "r"), "--init", str(tiny_bundle)])
    assert code == 2
    assert "takes 1-channel images, the training images have 3" in capsys.readouterr().err
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_evaluate_and_classifier_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "absent.safetensors")]) == 2
    assert "no such bundle file" in capsys.readouterr().err
    assert main(["evaluate", "--images", str(tmp_path)]) == 2
    assert "give both --images and --masks" in capsys.readouterr().err
    assert main(["evaluate", "--tile", "big"]) == 2
    assert "--tile must be a number of pixels or 'auto', not 'big'" in capsys.readouterr().err
    assert main(["train-classifier", str(tmp_path), "--output", str(tmp_path / "c.safetensors")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_calibrate_chooses_the_threshold_on_the_images_given(data: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    trained = tmp_path / "model.safetensors"
    assert main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "run"), "--no-progress",
                 "--set", "optim.lr=0.01", "--export", str(trained)]) == 0
    capsys.readouterr()
    before = trained.read_bytes()
    out = tmp_path / "calibrated.safetensors"
    images = ["--images", str(data / "image"), "--masks", str(data / "label"), "--select", "3"]
    assert main(["calibrate", str(trained), "-o", str(out), *images, "--tta", "flips", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert trained.read_bytes() == before  # the input bundle is untouched
    # The threshold with the fewest wrong pixels on image 3 (ties: nearest 0.5), found by hand.
    image = np.asarray(Image.open(data / "image" / "3.png"))
    truth = np.asarray(Image.open(data / "label" / "3.png")) == 255
    for mode, chosen in (("none", report["threshold"]), ("flips", report["tta_thresholds"]["flips"])):
        p = Predictor(trained, device="cpu", tta=mode, threshold=None).predict(image, probabilities=True).probabilities[1]
        errors = {t: int(np.sum((p >= t) != truth)) for t in sorted(CALIBRATION_THRESHOLDS, key=lambda t: abs(t - 0.5))}
        assert chosen == min(errors, key=errors.get)
        assert report["scores"][mode] == pytest.approx(errors[chosen] / truth.size)
    info = read_bundle_info(out)
    assert (info.threshold, info.tta_thresholds) == (report["threshold"], {"flips": report["tta_thresholds"]["flips"]})
    assert info.provenance["calibration"]["by"] == "pixel_error" and info.provenance["calibration"]["images"] == ["3"]
    old = read_bundle_info(trained)
    assert info.provenance["calibration"]["replaced"] == {"threshold": old.threshold, "tta_thresholds": old.tta_thresholds}
    assert info.metrics == old.metrics  # what training logged, at the replaced threshold
    # evaluate uses the new threshold: on the calibration image it scores the calibrated figure.
    assert main(["evaluate", str(out), *images, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["pixel_error"] == pytest.approx(report["scores"]["none"])


def test_calibrate_errors(data: Path, tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.safetensors"
    assert main(["calibrate", str(tmp_path / "absent.safetensors"), "-o", str(out)]) == 2
    assert "no such bundle file" in capsys.readouterr().err
    assert main(["calibrate", str(tiny_bundle), "-o", str(tmp_path / "out.pt")]) == 2
    assert "bundle files end in .safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", str(tiny_bundle), "-o", str(out), "--by", "loss"])
    assert "invalid choice: 'loss'" in capsys.readouterr().err
    three = tmp_path / "three"
    for kind in ("image", "label"):
        (three / kind).mkdir(parents=True)
        Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).save(three / kind / "a.png")
    assert main(["calibrate", str(tiny_bundle), "-o", str(out), "--images", str(three / "image"),
                 "--masks", str(three / "label")]) == 2
    assert "the masks have 3 classes" in capsys.readouterr().err
    assert not out.exists()
