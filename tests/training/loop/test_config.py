"""Training config: YAML + dotted overrides, typed validation with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import ROOT
from training.loop.config import ConfigError, load_config

BASE = ["data.images=img", "data.masks=mask"]


def test_defaults_and_overrides_are_typed() -> None:
    config = load_config(None, BASE + ["optim.lr=1e-3", "optim.name=sgd", "run.epochs=7", "data.val=[25-29]",
                                       "run.max_minutes=2", "augment.elastic.sigma=8"])
    assert config.optim.lr == pytest.approx(0.001) and isinstance(config.optim.lr, float)
    assert config.optim.name == "sgd" and config.optim.momentum == pytest.approx(0.99)
    assert config.run.epochs == 7 and config.run.max_minutes == 2.0
    assert config.data.val == ["25-29"]
    assert config.augment == {"elastic": {"sigma": 8}}
    assert config.to_dict()["optim"]["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.name=rmsprop", "optim.name: must be one of 'adam', 'sgd'"),
        ("optim.colour=red", "optim.colour: unknown key"),
        ("nonsense.key=1", "nonsense: unknown key"),
        ("run.epochs=0", "run.epochs: must be >= 1"),
        ("run.seed=1.5", "run.seed: expected an integer, got 1.5"),
        ("run.progress=maybe", "run.progress: expected true or false"),
        ("optim=3", "optim: expected a mapping"),
        ("missing-equals", "expected KEY=VALUE"),
        ("augment.wobble.p=1", "augment: unknown augmentation 'wobble'"),
        ("data.val_images=v", "data.val_images / data.val_masks: give both or neither"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, BASE + [override])
    assert message in str(error.value)


def test_data_is_required() -> None:
    with pytest.raises(ConfigError, match="data.images and data.masks: are required"):
        load_config(None, [])


def test_yaml_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "c.yaml").write_text("data:\n  images: ../img\n  masks: /abs/mask\nrun:\n  output: out\n")
    config = load_config(folder / "c.yaml", ["run.seed=3"])
    assert config.data.images == str(tmp_path / "img")
    assert config.data.masks == "/abs/mask"
    assert config.run.output == "out" and config.run.seed == 3


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: the top level must be a mapping"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_recipe_loads() -> None:
    config = load_config(ROOT / "configs" / "isbi2012.yaml")
    assert config.model.arch == "unet" and config.model.padding == "valid"
    assert Path(config.data.images).is_dir() and Path(config.data.masks).is_dir()
    assert config.data.train == ["0-24"] and config.data.val == ["25-29"]
