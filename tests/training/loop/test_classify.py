"""Backbone pre-training on scikit-learn's 8x8 digits (shipped with scikit-learn, no download)
and transfer of the trained encoder into an smp U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from training.data.dataset import DatasetError
from training.loop.classify import ClassifierConfig, evaluate_classifier, train_classifier
from training.loop.config import load_config
from training.loop.network import build_network

#: Small timm ResNet; 16 px inputs (the 8x8 digits upsampled).
ENCODER = "tu-resnet10t"
#: Training epochs: the whole budget (22.5 s for this file on a quiet 2-core machine; not asserted).
EPOCHS = 4


def export_digits(root: Path) -> tuple[Path, Path]:
    """The digits as PNG class folders: a stratified 75/25 train/test split."""
    digits = load_digits()
    pixels = (digits.images * 16).clip(0, 255).astype(np.uint8)  # values 0..16 -> 0..255
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    for split, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("digits")
    train, test = export_digits(root)
    config = ClassifierConfig(encoder=ENCODER, size=16, epochs=EPOCHS, lr=3e-3, threads=2, val_fraction=0.0)
    result = train_classifier(train, root / "digits.safetensors", config, log=lambda line: None)
    return root / "digits.safetensors", result, test


def test_digits_accuracy(trained: tuple[Path, dict, Path]) -> None:
    bundle, result, test = trained
    scored = evaluate_classifier(bundle, test, device="cpu")
    assert scored["images"] == 450
    assert scored["accuracy"] >= 0.97, scored
    assert result["epochs"] == EPOCHS  # the budget is work, not wall time (timed asserts fail under load)


def test_encoder_transfers_into_smp_unet(trained: tuple[Path, dict, Path], tmp_path: Path) -> None:
    bundle, _, _ = trained
    config = load_config(None, ["data.images=x", "data.masks=y", f"model.arch=smp.Unet:{ENCODER}",
                                f"model.encoder_weights={bundle}"])
    _, model = build_network(config, in_channels=1, num_classes=2)
    saved = {k.removeprefix("encoder."): v for k, v in load_file(str(bundle)).items() if k.startswith("encoder.")}
    own = model.encoder.state_dict()
    assert saved.keys() == own.keys()
    for key, value in saved.items():
        assert torch.equal(own[key], value), key


def test_wrong_encoder_is_refused(trained: tuple[Path, dict, Path]) -> None:
    bundle, _, _ = trained
    config = load_config(None, ["data.images=x", "data.masks=y", "model.arch=smp.Unet:resnet18",
                                f"model.encoder_weights={bundle}"])
    with pytest.raises(ValueError, match="holds a 'tu-resnet10t' encoder, the model uses 'resnet18'"):
        build_network(config, in_channels=1, num_classes=2)


def test_a_classifier_bundle_cannot_start_a_segmentation_network(trained: tuple[Path, dict, Path]) -> None:
    bundle, _, _ = trained
    config = load_config(None, ["data.images=x", "data.masks=y", f"model.init={bundle}"])
    with pytest.raises(ValueError, match="is a classification bundle; an encoder goes in model.encoder_weights"):
        build_network(config, in_channels=1, num_classes=2)


def test_bad_class_folders_are_named(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="at least 2"):
        train_classifier(tmp_path, tmp_path / "m.safetensors", log=lambda line: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: class folder without images"):
        train_classifier(tmp_path, tmp_path / "m.safetensors", log=lambda line: None)
