"""ONNX export of a bundle: PyTorch's ``torch.export``-based exporter, metadata embedded.

The graph has one input ``image`` ``(batch, C, H, W)`` float32 (normalised pixels, see the
bundle's ``normalization``) and one output ``logits`` ``(batch, K, H', W')`` float32 (``(batch,
K)`` for a classifier); batch, height and width are dynamic where the network allows (the input
dims read ``16*height_steps + 188`` for a depth-4 valid U-Net). The bundle's metadata and the
export record are in the model's ``metadata_props`` (:mod:`training.export.metadata`).

Needs the ``export`` extra (``onnx``, ``onnxscript``; ``onnxruntime`` to run or check the result).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from torch.export import ExportedProgram

from training.bundle import Bundle, write_atomically
from training.export.metadata import INPUT_NAME, OUTPUT_NAME, metadata_props
from training.export.program import (
    ONNX_SUFFIX,
    ExportError,
    capture,
    describe,
    export_record,
    first_line,
)

#: Opset written when none is asked for: the exporter's own (no version conversion), read by
#: ONNX Runtime 1.14 and later and by Triton's ONNX Runtime backend since 23.02.
DEFAULT_OPSET = 18
#: Opsets the exporter writes (it converts its own opset up to the newest ONNX defines).
OPSETS = range(18, 24)
#: What to install when the exporter's packages are missing.
EXPORT_EXTRA = "pip install 'tessera[export]'"


def require(module: str, purpose: str) -> None:
    """Import ``module`` or raise an :class:`ExportError` naming the extra that provides it."""
    try:
        __import__(module)
    except ImportError:
        raise ExportError(f"{purpose} needs the '{module}' package: {EXPORT_EXTRA}") from None


def check_opset(opset: int) -> int:
    """``opset`` if the exporter writes it; :class:`ExportError` naming the range otherwise."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported: the exporter writes opsets "
                          f"{OPSETS.start} to {OPSETS.stop - 1}")
    return opset


def export_onnx(bundle: Bundle, path: str | Path, opset: int = DEFAULT_OPSET,
                program: ExportedProgram | None = None) -> Path:
    """Write ``bundle``'s network as ONNX at ``path`` (atomically), metadata embedded.

    ``program``: an earlier :func:`training.export.program.capture` of the same bundle (one
    capture serves the ``.pt2`` and the ONNX file).
    """
    path = Path(path)
    if path.suffix != ONNX_SUFFIX:
        raise ExportError(f"{path}: ONNX files end in {ONNX_SUFFIX}")
    check_opset(opset)
    require("onnxscript", "ONNX export")
    require("onnx", "ONNX export")
    program = program or capture(bundle)
    onnx_program = translate(program, opset, describe(bundle.info))
    model = onnx_program.model
    model.metadata_props.update(metadata_props(bundle.info, export_record(bundle, "onnx", opset)))
    model.doc_string = f"Tessera {bundle.info.task} model: {describe(bundle.info)}, classes {bundle.info.classes}"
    return write_atomically(path, lambda temporary: onnx_program.save(temporary))


def translate(program: ExportedProgram, opset: int, name: str):
    """The ONNX program of ``program`` (``torch.onnx.ONNXProgram``), its progress lines silenced."""
    import torch.onnx  # noqa: PLC0415  the ONNX exporter loads onnxscript: only on export

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], optimize=True, verbose=False)
    except Exception as error:  # noqa: BLE001 -- the exporter raises many types; each means "cannot translate"
        raise ExportError(f"the ONNX exporter cannot translate this {name} network: {first_line(error)}") from None
