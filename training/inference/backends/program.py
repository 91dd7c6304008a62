"""A ``torch.export`` program (``.pt2``) as the predictor's model.

:class:`ProgramModel` wraps the program's module: exported programs are traced in eval mode and
refuse ``train()``/``eval()``, so the wrapper accepts both without passing them on; devices and
memory formats move the program's weights as for any module. Input sizes are checked against the
export record first, so a wrong size fails with the sizes the program takes rather than with a
failed shape guard.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.bundle import Bundle, BundleError, BundleInfo
from training.export.metadata import ExportRecord, sidecar_path
from training.export.program import ARCHIVE_METADATA, first_line, program_metadata
from training.inference.backends import check_input


class ProgramModel(nn.Module):
    """An exported program called like the network it came from (see the module docstring)."""

    #: Not a network with weights of its own: :func:`training.bundle.save_bundle` refuses it.
    exported = True

    def __init__(self, program: torch.export.ExportedProgram, info: BundleInfo, record: ExportRecord,
                 path: Path) -> None:
        super().__init__()
        self.program = program.module()
        self.path = path
        self.info = info
        self.record = record

    def train(self, mode: bool = True) -> ProgramModel:
        """Exported programs run as exported (eval mode); ``train(True)`` is refused."""
        if mode:
            raise ValueError("an exported program runs in eval mode only; train the bundle it came from")
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the normalised batch ``x`` ``(N, C, H, W)``."""
        check_input(x, self.info, self.record)
        return self.program(x)

    def __repr__(self) -> str:
        return f"ProgramModel({self.path.name}, torch {self.record.torch})"


def read_program(path: Path) -> tuple[torch.export.ExportedProgram, str]:
    """The program at ``path`` and the metadata JSON stored inside it; :class:`BundleError` when unreadable."""
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    extra = {ARCHIVE_METADATA: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as error:  # noqa: BLE001 -- torch.export.load raises many types for a foreign or damaged file
        raise BundleError(f"{path}: not a readable torch.export program ({first_line(error)})") from None
    return program, extra[ARCHIVE_METADATA]


def read_program_info(path: Path) -> BundleInfo:
    """The bundle metadata of a ``.pt2`` (the JSON beside it, else the copy inside it)."""
    archived = "" if sidecar_path(path).is_file() else read_program(path)[1]
    return program_metadata(path, archived)[0]


def load_program(path: Path, device: str | torch.device = "cpu") -> Bundle:
    """A bundle whose model runs the ``.pt2`` program at ``path`` on ``device``."""
    program, archived = read_program(path)
    info, record = program_metadata(path, archived)
    model = ProgramModel(program, info, record, path).to(device)
    return Bundle(model=model.eval(), info=info, path=path)
