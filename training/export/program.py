"""``torch.export`` capture of a bundle's network, and ``.pt2`` files of it.

One capture serves both formats: :func:`capture` traces the network with a dynamic batch and, for
segmentation networks, dynamic height and width constrained to the sizes the network takes
(:func:`training.export.metadata.size_rule`: a valid U-Net's 188 + 16k as ``188 + 16 *
height_steps``, an smp network's multiples of the stride); a classifier keeps the one size it
resizes images to. The ONNX exporter (:mod:`training.export.onnx`) translates the same program.

A ``.pt2`` file is :func:`torch.export.save`'s archive; the bundle metadata and the export record
are written beside it (``model.pt2.json``) and stored inside it (extra file ``tessera.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from training.bundle import (
    METADATA_KEY,
    Bundle,
    BundleError,
    BundleInfo,
    file_sha256,
    write_atomically,
)
from training.errors import TesseraError
from training.export.metadata import (
    EXPORT_KEY,
    ExportRecord,
    SizeRule,
    metadata_props,
    read_metadata,
    sidecar_path,
    sidecar_props,
    size_rule,
    write_sidecar,
)
from training.models import count_parameters

#: Batch size of the example input (1 would be specialised: the batch would not stay dynamic).
EXAMPLE_BATCH = 2
#: Extra file inside a ``.pt2`` archive holding the metadata JSON.
ARCHIVE_METADATA = "tessera.json"
#: Suffixes of the two export formats.
ONNX_SUFFIX = ".onnx"
PROGRAM_SUFFIX = ".pt2"


class ExportError(TesseraError):
    """A bundle that cannot be exported as asked; the message says why in one line."""


def check_exportable(info: BundleInfo) -> SizeRule:
    """The size rule of an exportable bundle; :class:`ExportError` saying why one is not."""
    if info.task == "segmentation" and info.geometry is None:
        raise ExportError("this segmentation bundle has no tile geometry: its input sizes are unknown")
    if info.task == "classification" and not info.tile.get("input"):
        raise ExportError("this classifier bundle does not say the image size it was trained on (tile.input)")
    if info.task not in ("segmentation", "classification"):
        raise ExportError(f"unknown task {info.task!r}: only segmentation and classification models export")
    return size_rule(info)


def example_input(info: BundleInfo, rule: SizeRule) -> torch.Tensor:
    """A random ``(2, C, H, W)`` input of valid sizes, height and width different (so neither is
    taken for the other while tracing)."""
    height = rule.min + 2 * rule.step
    width = rule.min + 3 * rule.step
    generator = torch.Generator().manual_seed(0)
    return torch.rand(EXAMPLE_BATCH, info.in_channels, height, width, generator=generator)


def dynamic_shapes(rule: SizeRule) -> tuple[dict[int, object]]:
    """``torch.export`` dynamic shapes: batch always; height and width as ``min + step * k``."""
    shapes: dict[int, object] = {0: Dim("batch", min=1)}
    if rule.step:
        shapes[2] = rule.min + rule.step * Dim("height_steps", min=0)
        shapes[3] = rule.min + rule.step * Dim("width_steps", min=0)
    return (shapes,)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (exporters write pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def describe(info: BundleInfo) -> str:
    """A short name of the bundle's architecture for messages (``unet``, ``smp Unet resnet18``)."""
    spec = info.spec
    return " ".join(str(spec[key]) for key in ("arch", "name", "encoder") if key in spec)


def capture(bundle: Bundle) -> ExportedProgram:
    """The bundle's network as an :class:`ExportedProgram` (dynamic shapes; the model is moved to
    the CPU and put in eval mode first)."""
    rule = check_exportable(bundle.info)
    model = bundle.model.to("cpu").eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, (example_input(bundle.info, rule),), dynamic_shapes=dynamic_shapes(rule))
    except Exception as error:  # noqa: BLE001 -- torch.export raises many types; each means "cannot capture"
        raise ExportError(f"torch.export cannot capture this {describe(bundle.info)} network: {first_line(error)}") from None


def export_record(bundle: Bundle, format: str, opset: int | None = None) -> ExportRecord:
    """The record of exporting ``bundle`` now (sizes, torch version, source file and hash)."""
    source = {}
    if bundle.path is not None and Path(bundle.path).is_file():
        source = {"name": Path(bundle.path).name, "sha256": file_sha256(bundle.path)}
    return ExportRecord(format=format, sizes=size_rule(bundle.info), torch=torch.__version__.split("+")[0],
                        opset=opset, source=source, parameters=count_parameters(bundle.model))


def export_program(bundle: Bundle, path: str | Path, program: ExportedProgram | None = None) -> Path:
    """Write ``bundle``'s network as a ``.pt2`` program at ``path`` with its metadata beside it
    (``path.json``) and inside it. ``program``: an earlier :func:`capture` of the same bundle."""
    path = Path(path)
    if path.suffix != PROGRAM_SUFFIX:
        raise ExportError(f"{path}: exported programs end in {PROGRAM_SUFFIX}")
    program = program or capture(bundle)
    props = metadata_props(bundle.info, export_record(bundle, "pt2"))
    document = json.dumps({key: json.loads(props[key]) for key in (METADATA_KEY, EXPORT_KEY)})

    def save(temporary: str) -> None:
        torch.export.save(program, temporary, extra_files={ARCHIVE_METADATA: document})

    write_atomically(path, save, suffix=f".tmp{PROGRAM_SUFFIX}")  # torch.export.save wants the suffix
    write_sidecar(path, props)
    return path


def program_metadata(path: Path, archived: str) -> tuple[BundleInfo, ExportRecord]:
    """The bundle info and export record of the ``.pt2`` at ``path``: the JSON beside it when
    present (it may be edited, as a bundle's threshold may be calibrated), else ``archived``, the
    copy read from inside the archive."""
    beside = sidecar_path(path)
    try:
        document = json.loads(beside.read_text() if beside.is_file() else archived or "{}")
    except (ValueError, OSError) as error:
        raise BundleError(f"{path}: cannot read its export metadata ({first_line(error)})") from None
    if not isinstance(document, dict):
        raise BundleError(f"{path}: its export metadata is not a JSON object")
    return read_metadata(sidecar_props(document), path)
