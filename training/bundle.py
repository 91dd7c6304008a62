"""Model bundles: one self-describing ``.safetensors`` file per trained model.

The tensors are the model's state dict; the safetensors header's metadata holds one JSON document
under the key ``"tessera"``::

    {"format": "tessera-bundle", "version": 1, "task": "segmentation" | "classification",
     "spec": {"arch": ...},                       # rebuilds the network (training.models)
     "in_channels": 1, "classes": ["membrane", "cell"],
     "normalization": {"mode": "image", ...},     # training.normalization.Normalization
     "geometry": {"padding": "valid", "depth": 4, "halo": 92, "kind": "unet"},
     "tile": {"input": 700},                      # default tile input size for inference
     "halo": {"presets": {"default": {"halo": 64, "agreement": 0.9995, ...}, ...}, ...},  # same padding
     "threshold": 0.3 | null,                     # decision threshold (training.inference.decision)
     "provenance": {...}, "metrics": {...}}

Loading never unpickles anything (safetensors has no code path that can), and a corrupt,
truncated or foreign file is refused with a :class:`BundleError` naming the file. Training writes
bundles; the tiler, the service, batch jobs and evaluation load them with :func:`load_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from training.errors import OptionError, TesseraError
from training.geometry import TileGeometry
from training.inference.decision import check_threshold
from training.models import build_model, measure_halo
from training.normalization import Normalization

FORMAT = "tessera-bundle"
VERSION = 1
METADATA_KEY = "tessera"
SUFFIX = ".safetensors"
#: Suffixes of exported models :func:`load_bundle` also reads (:mod:`training.inference.backends`).
EXPORT_SUFFIXES = (".onnx", ".pt2")
#: Bundles are readable by everyone (mkstemp makes 0600 files): a model mounted into a container
#: that runs under another uid must still load.
BUNDLE_MODE = 0o644


class BundleError(TesseraError):
    """A file that is not a loadable Tessera bundle; the message names the file and the reason."""


@dataclass
class BundleInfo:
    """Everything a bundle says about its model, apart from the weights."""

    spec: dict[str, Any]
    classes: list[str]
    in_channels: int
    normalization: Normalization = field(default_factory=Normalization)
    geometry: TileGeometry | None = None
    tile: dict[str, Any] = field(default_factory=dict)
    #: Same-padded networks: the halo scan (:class:`training.inference.halo.HaloScan` as JSON):
    #: agreement with the whole-image pass per halo and the halo of each preset. Empty: the
    #: geometry's halo is the impulse-response radius (:func:`training.models.measure_halo`).
    halo: dict[str, Any] = field(default_factory=dict)
    task: str = "segmentation"
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Two-class models: class 1 where its probability >= threshold (None: argmax); see
    #: :mod:`training.inference.decision`. Training calibrates it when ``run.threshold`` is ``calibrate``.
    threshold: float | None = None
    #: The threshold calibrated again with test-time augmentation, by mode (``flips``, ``d4``):
    #: averaging views changes the probabilities, so the best threshold may move. Empty: none.
    tta_thresholds: dict[str, float] = field(default_factory=dict)
    #: Classes an overlay tints (what a person looks for: the membranes of an EM model); None:
    #: every class not named ``background`` (see :func:`training.io.overlay.foreground_classes`).
    overlay_classes: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "spec": self.spec,
            "in_channels": self.in_channels,
            "classes": self.classes,
            "normalization": self.normalization.to_dict(),
            "geometry": self.geometry.to_dict() if self.geometry else None,
            "tile": self.tile,
            "halo": self.halo,
            "threshold": self.threshold,
            "tta_thresholds": self.tta_thresholds,
            "overlay_classes": self.overlay_classes,
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleInfo:
        geometry = data.get("geometry")
        classes = list(data["classes"])
        return cls(
            spec=data["spec"],
            classes=classes,
            in_channels=int(data["in_channels"]),
            normalization=Normalization.from_dict(data["normalization"]),
            geometry=TileGeometry.from_dict(geometry) if geometry else None,
            tile=dict(data.get("tile") or {}),
            halo=dict(data.get("halo") or {}),
            task=data.get("task", "segmentation"),
            provenance=dict(data.get("provenance") or {}),
            metrics=dict(data.get("metrics") or {}),
            threshold=check_threshold(data.get("threshold"), len(classes)),
            tta_thresholds={str(mode): check_threshold(value, len(classes))
                            for mode, value in (data.get("tta_thresholds") or {}).items()},
            overlay_classes=check_overlay_classes(data.get("overlay_classes"), len(classes)),
        )


def check_overlay_classes(value: Any, classes: int) -> list[int] | None:
    """``overlay_classes`` as a list of class indices below ``classes`` (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(k, int) and 0 <= k < classes for k in value):
        raise OptionError(f"overlay_classes must be a list of class indices 0..{classes - 1}, not {value!r}")
    return value


@dataclass
class Bundle:
    """A loaded model (in eval mode) and its :class:`BundleInfo`."""

    model: nn.Module
    info: BundleInfo
    path: Path | None = None


def save_bundle(path: str | Path, model: nn.Module, info: BundleInfo) -> Path:
    """Write ``model``'s weights and ``info`` to ``path`` atomically (temporary file, rename)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise BundleError(f"{path}: bundle files end in {SUFFIX}")
    if getattr(model, "exported", False):
        raise BundleError(f"{path}: an exported model (ONNX, .pt2) cannot be saved as a bundle; "
                          "use the bundle it was exported from")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(info.to_dict())}
    return write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def write_atomically(path: Path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(temporary)`` for a temporary file beside ``path`` (its name ends in
    ``suffix``), make it readable by everyone (:data:`BUNDLE_MODE`) and rename it to ``path``:
    readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, BUNDLE_MODE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def read_bundle_info(path: str | Path) -> BundleInfo:
    """Read only the metadata of a bundle (fast: the header, not the weights), or of an exported
    model (``.onnx``, ``.pt2``: :mod:`training.export`)."""
    path = Path(path)
    if path.suffix in EXPORT_SUFFIXES:
        from training.inference.backends import read_exported_info  # noqa: PLC0415  the backends import this module

        return read_exported_info(path)
    return _read(path, with_tensors=False)[0]


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle: rebuild its network from the spec, load the weights, switch to eval mode.

    An exported model (``.onnx``: ONNX Runtime; ``.pt2``: a ``torch.export`` program) loads as a
    bundle whose model runs the exported graph (:mod:`training.inference.backends`)."""
    path = Path(path)
    if path.suffix in EXPORT_SUFFIXES:
        from training.inference.backends import load_exported  # noqa: PLC0415  the backends import this module

        return load_exported(path, device)
    info, tensors = _read(path, with_tensors=True)
    try:
        model = build_model(info.spec)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path}: its model spec cannot be built ({error})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise BundleError(f"{path}: weights do not fit the model its metadata describes ({first})") from None
    if info.geometry is not None:
        model.geometry = info.geometry
    return Bundle(model=model.to(device).eval(), info=info, path=path)


def _read(path: Path, with_tensors: bool) -> tuple[BundleInfo, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if with_tensors:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BundleError(f"{path}: not a readable safetensors file ({error})") from None
    if METADATA_KEY not in metadata:
        raise BundleError(f"{path}: a safetensors file, but not a Tessera bundle (no '{METADATA_KEY}' metadata)")
    try:
        data = json.loads(metadata[METADATA_KEY])
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"bundle version {data.get('version')!r}, this Tessera reads {VERSION}")
        info = BundleInfo.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BundleError(f"{path}: bundle metadata is invalid ({error})") from None
    return info, tensors


#: The shipped default model (trained on ISBI 2012 slices 0-24, see the README).
DEFAULT_BUNDLE = Path(__file__).parent / "assets" / "default.safetensors"
#: Names that mean the shipped model wherever a bundle path is asked for (CLI, ``model.init``).
DEFAULT_NAMES = ("-", "default")


#: Bytes read at a time when hashing files.
HASH_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (how provenance and batch jobs name a bundle)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def bundle_path(name: str | Path) -> Path:
    """The bundle file ``name`` means: :data:`DEFAULT_BUNDLE` for a :data:`DEFAULT_NAMES` entry."""
    return DEFAULT_BUNDLE if str(name) in DEFAULT_NAMES else Path(name)


#: Default tile input size for same-padded networks (pixels per side).
DEFAULT_SAME_TILE = 512
#: Same-padded tiles span at least this many halos (2 of context, at least 2 kept).
SAME_TILE_HALOS = 4
#: Default wanted output per tile for valid networks: 516 (700 px input for the depth-4 U-Net,
#: not the paper's 388 -> 572). One tile covers a 512² image (572 px tiles need four, 2.7x the
#: pixels), and on a 2048² image (shipped model, 2 threads) 700 px tiles ran 1.2x faster than
#: 572 px ones (README, "Tests and benchmarks").
DEFAULT_VALID_OUTPUT = 516


def model_geometry(model: nn.Module, in_channels: int) -> TileGeometry:
    """The model's tile geometry, with the halo measured for same-padded networks."""
    geometry: TileGeometry = model.geometry
    if geometry.padding == "valid":
        return geometry
    return replace(geometry, halo=measure_halo(model, in_channels, geometry))


def default_tile(geometry: TileGeometry) -> dict[str, int]:
    """A sensible default tile for inference: 700 px input for a depth-4 valid U-Net; for same
    padding at least 512 px and at least 4 halos, so a tile keeps at least half of its side
    (a random smp resnet18 Unet measures a 256 px halo: 1024 px tiles, 512 px kept)."""
    if geometry.padding == "valid":
        return {"input": geometry.input_size_for(DEFAULT_VALID_OUTPUT)}
    size = max(DEFAULT_SAME_TILE, geometry.input_size_for(SAME_TILE_HALOS * geometry.halo))
    return {"input": size}


def new_bundle_info(
    spec: dict[str, Any],
    model: nn.Module,
    classes: list[str],
    normalization: Normalization,
    **fields: Any,
) -> BundleInfo:
    """Describe a freshly built or trained segmentation model (geometry measured, default tile)."""
    geometry = model_geometry(model, spec["in_channels"])
    return BundleInfo(
        spec=spec,
        classes=list(classes),
        in_channels=spec["in_channels"],
        normalization=normalization,
        geometry=geometry,
        tile=fields.pop("tile", None) or default_tile(geometry),
        **fields,
    )
