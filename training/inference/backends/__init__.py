"""Runtimes other than eager PyTorch for the one predictor, chosen by the model file's suffix.

``load_bundle("model.onnx")`` and ``load_bundle("model.pt2")`` return a
:class:`~training.bundle.Bundle` whose ``model`` is a :class:`torch.nn.Module` running the exported
graph (:mod:`.onnxruntime`: ONNX Runtime; :mod:`.program`: a ``torch.export`` program) and whose
``info`` is the metadata the export carries; the tiler, the service and batch jobs use it as they
use a ``.safetensors`` bundle. Exports are written by :mod:`training.export`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.bundle import Bundle, BundleInfo
from training.export.metadata import ExportRecord
from training.geometry import InvalidSizeError


def load_exported(path: Path, device: str | torch.device = "cpu") -> Bundle:
    """A bundle running the exported graph at ``path`` on ``device``."""
    if path.suffix == ".onnx":
        from training.inference.backends.onnxruntime import load_onnx  # noqa: PLC0415  onnxruntime is an optional extra

        return load_onnx(path, device)
    from training.inference.backends.program import load_program  # noqa: PLC0415  loaded only for .pt2 files

    return load_program(path, device)


def read_exported_info(path: Path) -> BundleInfo:
    """The bundle metadata an exported file carries."""
    if path.suffix == ".onnx":
        from training.inference.backends.onnxruntime import read_onnx_metadata  # noqa: PLC0415  onnxruntime is an optional extra

        return read_onnx_metadata(path)[0]
    from training.inference.backends.program import read_program_info  # noqa: PLC0415  loaded only for .pt2 files

    return read_program_info(path)


def check_input(x: torch.Tensor, info: BundleInfo, record: ExportRecord) -> None:
    """ValueError unless ``x`` is ``(N, C, H, W)`` with the model's channels and sizes the graph takes."""
    if x.ndim != 4 or x.shape[1] != info.in_channels:
        raise ValueError(f"input of shape {tuple(x.shape)}: the model takes (N, {info.in_channels}, H, W)")
    for axis, size in zip(("height", "width"), x.shape[-2:]):
        if not record.sizes.accepts(int(size)):
            raise InvalidSizeError(f"input {axis} {size} is not valid for this exported model: sizes are {record.sizes.rule}")
