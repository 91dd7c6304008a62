"""What an exported model carries beside its graph: the bundle's metadata and an export record.

An exported graph maps normalised pixels to logits and nothing more; the normalisation, the tile
geometry, the classes and the decision threshold stay in the bundle's metadata
(:class:`training.bundle.BundleInfo`), which every export carries verbatim:

* ONNX: ``metadata_props`` key ``"tessera"`` holds the bundle's JSON document (the same one the
  ``.safetensors`` header holds), key ``"tessera.export"`` the :class:`ExportRecord` as JSON, and a
  few flat keys (``classes``, ``input_sizes``, ``threshold``, ``tile_input``, ``normalization``) for
  people reading the model in a viewer;
* ``.pt2`` (``torch.export``): the same two documents in ``<name>.pt2.json`` beside it, one JSON
  object ``{"tessera": ..., "tessera.export": ...}``, also stored inside the archive.

The export record says how the graph was made and which input sizes it takes::

    {"format": "onnx", "opset": 18, "input": "image", "output": "logits",
     "sizes": {"min": 188, "step": 16, "rule": "188 + 16k"}, "batch": "dynamic",
     "torch": "2.14.1", "source": {"name": "default.safetensors", "sha256": "..."}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.bundle import METADATA_KEY, BundleError, BundleInfo

#: Key of the export record beside :data:`training.bundle.METADATA_KEY`.
EXPORT_KEY = "tessera.export"
#: Names of the graph's one input and one output.
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Suffix of the JSON written beside a ``.pt2`` program (``model.pt2`` -> ``model.pt2.json``).
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class SizeRule:
    """Input sizes (pixels per side, height and width alike) an exported graph takes:
    ``min + step * k`` for k >= 0; ``step`` 0: exactly ``min`` (a static size)."""

    min: int
    step: int

    @property
    def rule(self) -> str:
        """The rule in words: ``"188 + 16k"``, ``"a multiple of 32"`` or ``"exactly 32"``."""
        if self.step == 0:
            return f"exactly {self.min}"
        if self.min == self.step:
            return f"a multiple of {self.step}"
        return f"{self.min} + {self.step}k"

    def accepts(self, size: int) -> bool:
        """True when ``size`` pixels per side is one of the sizes of this rule."""
        if self.step == 0:
            return size == self.min
        return size >= self.min and (size - self.min) % self.step == 0

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "step": self.step, "rule": self.rule}


def size_rule(info: BundleInfo) -> SizeRule:
    """The input sizes ``info``'s network takes: its tile geometry's (valid U-Net: 188 + 16k;
    same padding: multiples of the stride); a classifier the one size it resizes images to."""
    geometry = info.geometry
    if info.task == "segmentation" and geometry is not None:
        return SizeRule(min=geometry.min_input, step=geometry.stride)
    return SizeRule(min=int(info.tile["input"]), step=0)


@dataclass(frozen=True)
class ExportRecord:
    """How an exported file was made (see the module docstring)."""

    format: str
    sizes: SizeRule
    torch: str
    opset: int | None = None
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME
    batch: str = "dynamic"
    source: dict[str, str] = field(default_factory=dict)
    #: The exported network's parameter count (a runtime such as ONNX Runtime does not expose it).
    parameters: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes"] = self.sizes.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        sizes = data["sizes"]
        return cls(
            format=str(data["format"]),
            sizes=SizeRule(min=int(sizes["min"]), step=int(sizes["step"])),
            torch=str(data.get("torch", "")),
            opset=data.get("opset"),
            input=str(data.get("input", INPUT_NAME)),
            output=str(data.get("output", OUTPUT_NAME)),
            batch=str(data.get("batch", "dynamic")),
            source=dict(data.get("source") or {}),
            parameters=int(data["parameters"]) if data.get("parameters") is not None else None,
        )


def metadata_props(info: BundleInfo, record: ExportRecord) -> dict[str, str]:
    """The string map an export embeds: the two JSON documents and flat keys for viewers."""
    return {
        METADATA_KEY: json.dumps(info.to_dict()),
        EXPORT_KEY: json.dumps(record.to_dict()),
        "classes": json.dumps(info.classes),
        "input_sizes": record.sizes.rule,
        "normalization": json.dumps(info.normalization.to_dict()),
        "threshold": json.dumps(info.threshold),
        "tile_input": json.dumps(info.tile.get("input")),
    }


def read_metadata(props: dict[str, str], path: Path) -> tuple[BundleInfo, ExportRecord]:
    """The bundle info and export record in an export's string map; :class:`BundleError` naming
    ``path`` when they are missing or invalid."""
    if METADATA_KEY not in props or EXPORT_KEY not in props:
        raise BundleError(f"{path}: not a Tessera export (no '{METADATA_KEY}' metadata); "
                          "export bundles with 'tessera export'")
    try:
        info = BundleInfo.from_dict(json.loads(props[METADATA_KEY]))
        record = ExportRecord.from_dict(json.loads(props[EXPORT_KEY]))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BundleError(f"{path}: export metadata is invalid ({error})") from None
    return info, record


def sidecar_path(program: Path) -> Path:
    """The JSON written beside a ``.pt2`` program."""
    return program.with_name(program.name + SIDECAR_SUFFIX)


def write_sidecar(program: Path, props: dict[str, str]) -> Path:
    """Write the two JSON documents of ``props`` beside ``program``, readable as one object."""
    path = sidecar_path(program)
    document = {METADATA_KEY: json.loads(props[METADATA_KEY]), EXPORT_KEY: json.loads(props[EXPORT_KEY])}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def sidecar_props(document: dict[str, Any]) -> dict[str, str]:
    """The string map of a sidecar JSON object (inverse of :func:`write_sidecar`)."""
    return {key: json.dumps(value) for key, value in document.items() if key in (METADATA_KEY, EXPORT_KEY)}
