"""The package's public API: every name ``training.__all__`` lists resolves to a real object."""

import importlib
import subprocess
import sys

import training


def test_every_public_name_resolves() -> None:
    for name in training.__all__:
        value = getattr(training, name)
        assert value is getattr(importlib.import_module(training._EXPORTS[name]), name)


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        training.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("training.no_such_name resolved")


def test_training_data_resolves_its_names_on_first_use() -> None:
    import training.data as data  # noqa: PLC0415  the package under test

    for name in data.__all__:
        assert getattr(data, name) is getattr(importlib.import_module(data._EXPORTS[name]), name)
    assert set(data.__all__) <= set(dir(data))


def test_the_predictor_loads_neither_albumentations_nor_the_trainer() -> None:
    """Inference reads the augmentation settings (the views of TTA), never the pipeline."""
    code = ("import sys, training.inference.predictor; "
            "print(sorted(m for m in ('albumentations', 'training.data.augment', 'training.loop.trainer') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
