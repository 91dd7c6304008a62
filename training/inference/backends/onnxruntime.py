"""ONNX Runtime as the predictor's model: an exported ``.onnx`` behind the ``nn.Module`` interface.

:class:`OnnxRuntimeModel` takes and returns torch tensors like the network it was exported from
(normalised ``(N, C, H, W)`` float32 in, logits out, on the input's device), so
:class:`~training.inference.predictor.Predictor` tiles it exactly as it tiles the eager network:

* ``model.to(device)`` chooses the execution provider: CUDA for a CUDA device when this
  ONNX Runtime has it (the ``onnxruntime-gpu`` package), the CPU otherwise (with a warning for a
  CUDA device). ``memory_format`` and ``eval()`` mean nothing to a graph and are accepted;
* the session runs with as many intra-op threads as PyTorch has (``torch.get_num_threads()``, set
  by ``tessera serve`` workers and batch jobs), and is rebuilt when that number changes;
* the graph holds no PyTorch modules: ``modules()`` yields this wrapper alone, so forward hooks
  see only its output.

Needs ``onnxruntime`` (the ``export`` extra); without it loading fails with one line naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.bundle import Bundle, BundleError, BundleInfo
from training.export.metadata import ExportRecord, read_metadata
from training.export.program import first_line
from training.inference.backends import check_input

#: What to install when onnxruntime is missing.
RUNTIME_EXTRA = "pip install 'tessera[export]'"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class MissingRuntime(BundleError):
    """ONNX Runtime is not installed; the message names the extra that installs it."""


def runtime():
    """The ``onnxruntime`` module, or :class:`MissingRuntime` naming the extra that provides it."""
    try:
        import onnxruntime  # noqa: PLC0415  an optional extra: its absence is a one-line error
    except ImportError:
        raise MissingRuntime(f"running ONNX models needs the 'onnxruntime' package: {RUNTIME_EXTRA}") from None
    return onnxruntime


def providers_for(device: torch.device) -> list:
    """Execution providers for ``device``: CUDA (then CPU) when available for a CUDA device, else CPU."""
    if device.type != "cuda":
        return [CPU]
    if CUDA in runtime().get_available_providers():
        return [(CUDA, {"device_id": device.index or 0}), CPU]
    warnings.warn(f"this onnxruntime has no CUDA provider (install onnxruntime-gpu): the ONNX model runs on "
                  f"the CPU, its results are copied to {device}", stacklevel=3)
    return [CPU]


def open_session(path: Path, device: torch.device, threads: int, optimize: bool = True):
    """An ONNX Runtime session of the model at ``path``; :class:`BundleError` for a file it cannot
    read. ``optimize=False``: no graph optimisation (a session only to read metadata opens faster)."""
    ort = runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except Exception as error:  # noqa: BLE001 -- onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise BundleError(f"{path}: not a readable ONNX model ({first_line(error)})") from None


class OnnxRuntimeModel(nn.Module):
    """An exported ONNX model run by ONNX Runtime, called like the PyTorch network it came from.

    Args:
        path: the ``.onnx`` file.
        info, record: its embedded metadata (:func:`read_onnx_metadata`).
        device: where inputs and outputs live; picks the execution provider.
        session: an open session to start with (None: opened on first use).
    """

    #: Not a network with weights of its own: :func:`training.bundle.save_bundle` refuses it.
    exported = True

    def __init__(self, path: Path, info: BundleInfo, record: ExportRecord,
                 device: str | torch.device = "cpu", session=None) -> None:
        super().__init__()
        self.path = Path(path)
        self.info = info
        self.record = record
        self.device = torch.device(device)
        self._session = session
        self._threads = torch.get_num_threads() if session is not None else None

    def session(self):
        """The session for the current device and PyTorch thread count (rebuilt when either changed)."""
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            self._session = open_session(self.path, self.device, threads)
            self._threads = threads
        return self._session

    def to(self, *args, **kwargs) -> OnnxRuntimeModel:
        """Move to a device (the next call opens a session with its provider); float32 only."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"an ONNX model runs in float32, not {dtype}")
        if device is not None and torch.device(device) != self.device:
            self.device = torch.device(device)
            self._session = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the normalised batch ``x`` ``(N, C, H, W)``, float32 on ``x``'s device."""
        check_input(x, self.info, self.record)
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session().run([self.record.output], {self.record.input: pixels})
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_session"] = None  # sessions do not pickle; the copy opens its own
        return state

    def extra_repr(self) -> str:
        return f"{self.path.name}, opset {self.record.opset}, device {self.device}"


def read_onnx_metadata(path: Path, session=None) -> tuple[BundleInfo, ExportRecord]:
    """The bundle info and export record embedded in an ``.onnx`` file."""
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    session = session or open_session(path, torch.device("cpu"), 1, optimize=False)
    return read_metadata(dict(session.get_modelmeta().custom_metadata_map), path)


def load_onnx(path: Path, device: str | torch.device = "cpu") -> Bundle:
    """A bundle whose model runs the ``.onnx`` at ``path`` with ONNX Runtime on ``device``."""
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    device = torch.device(device)
    session = open_session(path, device, torch.get_num_threads())
    info, record = read_onnx_metadata(path, session)
    if record.format != "onnx":
        raise BundleError(f"{path}: its export record says format {record.format!r}, not onnx")
    model = OnnxRuntimeModel(path, info, record, device, session)
    return Bundle(model=model.eval(), info=info, path=path)
