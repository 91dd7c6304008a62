"""Training configuration: a YAML file plus command-line overrides, validated into dataclasses.

A config is a tree of dataclasses (:class:`TrainConfig` at the root). It is read from YAML with
:func:`load_config`, changed with dotted overrides (``optim.lr=1e-3``, ``model.arch=smp.Unet:resnet18``;
values are parsed as YAML scalars, so ``1e-3``, ``true``, ``null`` and ``[0, 1]`` work) and checked
field by field: an unknown key, a wrong type or a value out of range stops with a :class:`ConfigError`
naming the dotted key, e.g. ``optim.lr: expected a number, got 'fast'``.

Input paths in a YAML file (``data.images``, ``data.masks``, ``data.val_images``,
``data.val_masks``, ``model.encoder_weights``) are relative to the file's folder; paths given as
overrides, and ``run.output``, are relative to the working directory.

The whole resolved config is stored in every bundle's provenance (:meth:`TrainConfig.to_dict`), so a
bundle says exactly how it was trained.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from training.errors import TesseraError


class ConfigError(TesseraError):
    """An invalid configuration; the message names the dotted key and what is wrong."""


@dataclass
class DataConfig:
    """Where the training and validation pairs are.

    ``images``/``masks`` are folders paired by file stem (classes from a ``classes.yaml`` beside
    the masks, see :mod:`training.data.dataset`). The validation set is either given as its
    own folders (``val_images``/``val_masks``), or picked from the training folders with ``val``;
    ``train`` likewise restricts the training pairs (default: every pair not used for validation).
    Both are selections (:mod:`training.data.selection`): stems (``"7"``, ``"img_3"``), stem
    ranges (``"25-29"``: the stems 25 through 29 in natural order; a number always means the stem
    it spells), or positions in natural stem order after ``pos:`` (``"pos:0-4"``, 0-based).
    ``foreground_fraction`` of the patches are centred on a foreground pixel (nnU-Net's
    oversampling). ``rand_class`` names the
    class whose connected components the adapted Rand error compares (default for two classes:
    class 1, ISBI's ``cell``). ``label_offset``: ``[dy, dx]`` pixels the masks sit off the
    structures they trace (negative: up / left; ISBI 2012: about ``[-0.6, -0.2]``), so that flips
    and turns keep it (:class:`training.data.augment.OffsetDihedral`). ``mpp``: micrometres per pixel
    of the training images, when known; slides are then segmented at that resolution
    (:mod:`training.io.slides`).
    """

    images: str = ""
    masks: str = ""
    train: list[str] | None = None
    val: list[str] | None = None
    val_images: str | None = None
    val_masks: str | None = None
    classes: list[str] | None = None
    ignore_index: int | None = None
    normalization: Literal["image", "fixed"] = "image"
    foreground_fraction: float = 0.0
    rand_class: str | None = None
    label_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])
    mpp: float | None = None


@dataclass
class ModelConfig:
    """The network: ``unet`` (classic U-Net) or ``smp.<Arch>:<encoder>``.

    ``depth``/``width``/``padding``/``norm``/``dropout`` apply to the classic U-Net.
    ``encoder_weights`` is a local file (torchvision/timm state dict, or one of our classifier
    bundles); ``freeze_encoder_epochs`` keeps the encoder frozen for that many epochs (-1: always).
    ``init`` fine-tunes a segmentation bundle (``default``: the shipped model): the network is the
    bundle's, weights included, and the settings above except ``freeze_encoder_epochs`` are not used.
    """

    arch: str = "unet"
    depth: int = 4
    width: int = 32
    padding: Literal["valid", "same"] = "valid"
    norm: Literal["batch", "instance", "none"] = "batch"
    dropout: float = 0.0
    encoder_weights: str | None = None
    freeze_encoder_epochs: int = 0
    in_channels: int | None = None
    init: str | None = None


@dataclass
class PatchConfig:
    """Training samples: ``size`` is the network *input* window in pixels (a valid input size of
    the model; for a valid-padded U-Net the output is smaller by twice the margin, e.g. 572 -> 388);
    ``samples_per_epoch`` patches make one epoch."""

    size: int = 380
    batch_size: int = 4
    samples_per_epoch: int = 200


@dataclass
class LossConfig:
    """``dice_ce`` (default), ``ce`` or ``dice``; ``weight_map`` weighs pixels with the paper's map:
    class balancing ``class_weights`` (``balanced`` or ``none``) plus the border term (``w0``,
    ``sigma`` in pixels)."""

    name: Literal["dice_ce", "ce", "dice"] = "dice_ce"
    weight_map: bool = True
    class_weights: Literal["balanced", "none"] = "balanced"
    w0: float = 10.0
    sigma: float = 5.0


@dataclass
class OptimConfig:
    """Adam, or SGD with momentum (the paper's 0.99); ``schedule`` ``poly`` is nnU-Net's
    ``lr * (1 - step/steps) ** poly_power``. ``ema``: the decay of a moving average of the weights
    after every step (:mod:`training.loop.averaging`), validated and saved in place of the live weights
    (0: off; 0.99 averages over about the last 100 steps)."""

    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: Literal["poly", "constant"] = "poly"
    poly_power: float = 0.9
    ema: float = 0.0


@dataclass
class RunConfig:
    """How long, where and how reproducibly to train.

    Training stops after ``epochs`` epochs or ``max_minutes`` of wall time, whichever first (at
    least one must be set); ``patience`` epochs without a better validation score stop early (0:
    off). ``threads`` sets torch's intra-op threads (0: torch's default). ``threshold``: two-class
    tasks, how labels come from probabilities: ``argmax``, or ``calibrate`` -- at every validation
    the decision threshold that scores best on ``calibrate_by`` (default: ``monitor``; pixel error
    for ``loss``) over up to five *training* images, whole and un-augmented, is chosen, used for
    that validation and recorded in the bundles (:mod:`training.inference.decision`); the monitor still
    picks the best epoch. ``precise_bn``: before every validation,
    re-estimate BatchNorm statistics as the exact mean over this many un-augmented training
    patches (0: keep the training-time moving averages; :mod:`training.loop.batchnorm`).
    ``precision`` of the training steps (:func:`training.device.autocast_dtype`): ``auto`` (mixed
    bf16/fp16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16`` (also on the CPU: about 2x
    faster where the CPU has bf16 instructions) or ``float16`` (CUDA). Validation and the saved
    bundles are float32 either way. ``halo`` (same-padded networks): ``scan`` -- at the end of the
    run the best bundle's halo is measured from agreement with the whole-image pass on the
    validation images (training images when there are none; :mod:`training.inference.halo`);
    ``impulse`` -- keep the impulse-response radius.
    """

    epochs: int | None = 50
    max_minutes: float | None = None
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    threads: int = 0
    patience: int = 0
    monitor: str = "dice"
    val_every: int = 1
    output: str = "runs/train"
    progress: bool = True
    overlays: int = 2
    threshold: Literal["argmax", "calibrate"] = "argmax"
    calibrate_by: str | None = None
    precise_bn: int = 0
    precision: str = "auto"
    halo: Literal["scan", "impulse"] = "scan"


@dataclass
class TrainConfig:
    """The root of a training configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    augment: dict[str, Any] | str = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Cross-field checks beyond types; returns ``self``."""
        from training.device import PRECISIONS  # noqa: PLC0415  the config stays readable without loading torch

        checks = [
            (bool(self.data.images) and bool(self.data.masks), "data.images and data.masks", "are required"),
            (self.patch.size >= 1, "patch.size", "must be >= 1"),
            (self.patch.batch_size >= 1, "patch.batch_size", "must be >= 1"),
            (self.patch.samples_per_epoch >= 1, "patch.samples_per_epoch", "must be >= 1"),
            (self.optim.lr > 0, "optim.lr", "must be > 0"),
            (0 <= self.optim.momentum < 1, "optim.momentum", "must be in [0, 1)"),
            (0 <= self.optim.ema < 1, "optim.ema", "must be in [0, 1) (0: no weight averaging)"),
            (self.run.epochs is not None or self.run.max_minutes is not None,
             "run.epochs / run.max_minutes", "set at least one"),
            (self.run.epochs is None or self.run.epochs >= 1, "run.epochs", "must be >= 1"),
            (self.run.max_minutes is None or self.run.max_minutes > 0, "run.max_minutes", "must be > 0"),
            (self.run.workers >= 0, "run.workers", "must be >= 0"),
            (self.run.threads >= 0, "run.threads", "must be >= 0"),
            (self.run.patience >= 0, "run.patience", "must be >= 0"),
            (self.run.val_every >= 1, "run.val_every", "must be >= 1"),
            (0 <= self.data.foreground_fraction <= 1, "data.foreground_fraction", "must be in [0, 1]"),
            (self.data.mpp is None or self.data.mpp > 0, "data.mpp", "must be a positive number of micrometres per pixel"),
            (self.model.freeze_encoder_epochs >= -1, "model.freeze_encoder_epochs", "must be >= -1"),
            (not (self.model.init and self.model.encoder_weights), "model.init / model.encoder_weights",
             "give one: init starts the whole network from a bundle"),
            ((self.data.val_images is None) == (self.data.val_masks is None),
             "data.val_images / data.val_masks", "give both or neither"),
            (self.model.depth >= 1 and self.model.width >= 1, "model.depth / model.width", "must be >= 1"),
            (self.run.precise_bn >= 0, "run.precise_bn", "must be >= 0"),
            (self.run.precision in PRECISIONS, "run.precision", f"must be one of {', '.join(PRECISIONS)}"),
            (self.run.halo in ("scan", "impulse"), "run.halo", "must be scan or impulse"),
            (self.run.monitor in MONITORS, "run.monitor", f"must be one of {', '.join(MONITORS)}"),
            (self.run.calibrate_by in (None, *CALIBRATION_METRICS), "run.calibrate_by",
             f"must be one of {', '.join(CALIBRATION_METRICS)}"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise ConfigError(f"{key}: {problem}")
        from training.data.augment_config import read_config  # noqa: PLC0415  the configuration without albumentations
        from training.data.label_offset import check_label_offset  # noqa: PLC0415  albumentations loads only for a config that augments

        try:
            read_config(self.augment)
        except ValueError as error:
            raise ConfigError(f"augment: {error}") from None
        try:
            check_label_offset(self.data.label_offset)
        except ValueError as error:
            raise ConfigError(f"data.{error}") from None
        return self


#: Validation metrics early stopping and the best bundle can follow (higher is better for dice and
#: iou, lower for the rest; see :data:`LOWER_IS_BETTER`).
MONITORS = ("dice", "iou", "pixel_error", "rand_error", "loss")
LOWER_IS_BETTER = frozenset({"pixel_error", "rand_error", "loss"})
#: Metrics a decision threshold can be calibrated by (``run.calibrate_by``, ``tessera calibrate``).
CALIBRATION_METRICS = tuple(m for m in MONITORS if m != "loss")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _anchor_paths(loaded or {}, path.parent)
    for override in overrides or []:
        apply_override(data, override)
    return from_dict(TrainConfig, data, "").validate()


#: Settings that name input files; in a YAML file they are relative to the file's folder.
PATH_KEYS = {"data": ("images", "masks", "val_images", "val_masks"), "model": ("encoder_weights", "init")}


def _anchor_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Make the input paths of a config file relative to its folder (``run.output`` and
    command-line overrides stay relative to the working directory; ``default`` names the shipped model)."""
    from training.bundle import DEFAULT_NAMES  # noqa: PLC0415  the config stays readable without loading torch

    for section, keys in PATH_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        for key in keys:
            value = values.get(key)
            if isinstance(value, str) and value not in ("", *DEFAULT_NAMES) and not Path(value).is_absolute():
                values[key] = str(Path(os.path.normpath(folder / value)))
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in a nested dict; the value is parsed as a YAML scalar/list."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types; errors name dotted keys."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {name: _coerce(hints[name], data[name], f"{prefix}{name}") for name in names if name in data}
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, scalar -> list of str) one value against a hint."""
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value if value is not None else {}, f"{key}.")
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(items)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            value = _parse_float(value, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {kind!r}")


def _parse_float(text: str, key: str) -> float:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it as the number it means."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None
