"""Resumable training state beside the ``last`` bundle, without pickle.

The model's weights live in the ``last.safetensors`` bundle itself. Everything else a resumed run
needs to continue *exactly* is written next to it:

* ``last.state.safetensors`` -- the optimizer's tensors (Adam moments, SGD momentum buffers,
  step counters), flattened to ``optimizer/<param index>/<name>``, and, when the bundle holds other
  weights than the ones being trained (a moving average, :mod:`training.loop.averaging`), the trained
  model's state as ``model/<name>``;
* ``last.state.json`` -- the optimizer's non-tensor state (param groups, learning rates), the
  epoch and step counters, elapsed seconds, the early-stopping record and the metric history.

Random state need not be saved: the trainer reseeds every random generator at the start of each
epoch from ``(seed, epoch)`` (:mod:`training.loop.seeding`), so a run resumed at an epoch boundary
draws the same patches and augmentations as an uninterrupted one. :func:`load_optimizer` puts the
optimizer's tensors back in their parameters' memory layout (channels_last for convolutions; a
safetensors file stores them contiguous), so the resumed updates run the kernels the
uninterrupted run ran.

Both files are written to temporary names and renamed, the JSON last, so a crash leaves either
the previous complete state or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.errors import TesseraError

#: Separator in flattened optimizer tensor names.
SEP = "/"
#: Prefix of the trained model's tensors in the state file.
MODEL = "model" + SEP
STATE_SUFFIX = ".state.safetensors"
JSON_SUFFIX = ".state.json"


class CheckpointError(TesseraError):
    """Missing or inconsistent resume state; the message names the file."""


def state_paths(bundle: Path) -> tuple[Path, Path]:
    """``(tensor file, json file)`` beside a bundle ``.../last.safetensors``."""
    stem = bundle.with_suffix("")
    return stem.with_name(stem.name + STATE_SUFFIX), stem.with_name(stem.name + JSON_SUFFIX)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict()`` -> (tensors by flat name, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer{SEP}{index}{SEP}{name}"] = value.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(SEP, 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in data["plain_state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": data["param_groups"]}


def save_state(
    bundle: Path, optimizer: torch.optim.Optimizer, record: dict[str, Any], model: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the optimizer state, ``record`` (JSON-able) and, if given, the trained ``model``'s
    state dict beside ``bundle``, atomically."""
    tensor_path, json_path = state_paths(bundle)
    tensors, plain = flatten_optimizer(optimizer.state_dict())
    for name, value in (model or {}).items():
        tensors[MODEL + name] = value.detach().to("cpu").contiguous()
    temporary = tensor_path.with_name(tensor_path.name + ".tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, tensor_path)
    document = {"optimizer": plain, **record}
    temporary = json_path.with_name(json_path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1))
    os.replace(temporary, json_path)


def load_state(bundle: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(optimizer state_dict, record, model state dict)`` saved by :func:`save_state` beside
    ``bundle``; the model state is empty when none was saved (the bundle holds the trained weights)."""
    tensor_path, json_path = state_paths(bundle)
    for path in (bundle, tensor_path, json_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, cannot resume (train without --resume to start over)")
    try:
        document = json.loads(json_path.read_text())
        tensors = load_file(str(tensor_path))
        model = {k[len(MODEL):]: tensors.pop(k) for k in list(tensors) if k.startswith(MODEL)}
        optimizer = unflatten_optimizer(tensors, document.pop("optimizer"))
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointError(f"{json_path}: unreadable resume state ({error})") from None
    return optimizer, document, model


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` (from :func:`load_state`) into ``optimizer``, every per-parameter tensor of
    the parameter's shape (Adam moments, momentum buffers) in that parameter's memory layout.

    ``Optimizer.load_state_dict`` keeps the contiguous layout of the file, so an update would
    combine a channels_last parameter and gradient with contiguous moments, which element-wise
    kernels may walk (and round) differently from the uninterrupted run's all-channels_last update.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            entries = optimizer.state.get(parameter, {})
            for name, value in entries.items():
                if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                    entries[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def restore(bundle: Path, model: nn.Module, optimizer: torch.optim.Optimizer, average: nn.Module | None) -> dict[str, Any]:
    """Put a saved run back: ``model``'s trained weights, the moving ``average``'s (the bundle's
    weights when there is one; None: the run has no average) and the ``optimizer``'s state, from
    ``bundle`` and its state files; returns the record :func:`save_state` was given. A run saved
    with a moving average resumes only with one, and the other way round."""
    optimizer_state, record, trained = load_state(bundle)
    tensors = load_file(str(bundle))
    if average is not None:
        if not trained:
            raise CheckpointError(f"{bundle}: saved without optim.ema; resume with the run's own config")
        average.load_state_dict(tensors, strict=True)
        tensors = trained
    elif trained:
        raise CheckpointError(f"{bundle}: saved with optim.ema; resume with the run's own config")
    model.load_state_dict(tensors, strict=True)
    load_optimizer(optimizer, optimizer_state)
    return record
