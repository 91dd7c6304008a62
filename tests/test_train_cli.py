"""``tessera train``, ``tessera evaluate`` and ``tessera train-classifier`` from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import build_parser, main
from training.bundle import read_bundle_info

ISBI = Path(__file__).resolve().parents[1] / "training" / "assets" / "isbi2012"


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
    ],
)
def test_train_errors_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   arguments: list[str], message: str) -> None:
    code = main(["train", "--config", str(data / "tiny.yaml"), "--output", str(tmp_path / "r"), *arguments])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("tessera train: error:")
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
