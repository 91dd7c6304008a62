"""The augmentation configuration: :data:`DEFAULT_AUGMENTATION` and :func:`read_config`, which
merges a user's dict, YAML file or YAML text over it (the transforms themselves, and
albumentations, are in :mod:`training.data.augment`; inference reads the configuration only, for
the test-time views a bundle was trained with, without loading albumentations)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from training.errors import OptionError

#: Each transform's options and probability ``p`` (see :mod:`training.data.augment`).
DEFAULT_AUGMENTATION: dict[str, dict[str, Any]] = {
    "flip": {"p": 0.5, "axes": "both"},
    "rotate90": {"p": 0.5},
    "elastic": {"p": 0.5, "grid": 3, "sigma": 10.0},
    "affine": {"p": 0.3, "scale": [0.9, 1.1], "rotate": [-15.0, 15.0]},
    "brightness": {"p": 0.3, "limit": 0.1},
    "contrast": {"p": 0.3, "limit": 0.15},
    "gamma": {"p": 0.3, "range": [0.8, 1.25]},
    "noise": {"p": 0.15, "std": [0.0, 0.05]},
    "blur": {"p": 0.1, "sigma": [0.5, 1.0]},
}


def read_config(config: Mapping | str | Path | None) -> dict[str, dict[str, Any]]:
    """The effective configuration: defaults merged with ``config`` (dict, YAML file or text)."""
    if config is None:
        return copy.deepcopy(DEFAULT_AUGMENTATION)
    if isinstance(config, str) and config.strip().lower() == "none":
        return {}
    if isinstance(config, Path) or (isinstance(config, str) and Path(config).is_file()):
        config = yaml.safe_load(Path(config).read_text()) or {}
    elif isinstance(config, str):
        config = yaml.safe_load(config) or {}
    if not isinstance(config, Mapping):
        raise OptionError(f"augmentation config must be a mapping of transform -> options, got {config!r}")
    merged = copy.deepcopy(DEFAULT_AUGMENTATION)
    for name, options in config.items():
        if name not in DEFAULT_AUGMENTATION:
            raise OptionError(f"unknown augmentation {name!r}: choose from {', '.join(DEFAULT_AUGMENTATION)}")
        if options is False or options is None:
            merged.pop(name)
            continue
        if options is True:
            continue
        if not isinstance(options, Mapping):
            raise OptionError(f"augmentation {name!r}: options must be a mapping, true or false")
        unknown = set(options) - set(DEFAULT_AUGMENTATION[name])
        if unknown:
            raise OptionError(
                f"augmentation {name!r}: unknown option(s) {sorted(unknown)}; "
                f"known: {', '.join(DEFAULT_AUGMENTATION[name])}"
            )
        merged[name].update(options)
    return {name: options for name, options in merged.items() if options.get("p", 0) > 0}
