"""The package's public API: every name ``training.__all__`` lists resolves to a real object."""

import importlib

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
