"""A Triton Inference Server model repository for a bundle: the ONNX graph, its config, a README.

Layout (``DIR`` is the repository Triton is started with, ``--model-repository DIR``)::

    DIR/<name>/config.pbtxt      ONNX Runtime backend, dynamic batching, input/output names and dims
    DIR/<name>/1/model.onnx      the exported graph (:mod:`training.export.onnx`), metadata embedded
    DIR/<name>/README.md         what the client must do around the graph: normalise, tile, decide

Triton serves the graph; it does not normalise, tile or threshold. The README says how, with the
numbers of this bundle, and names the reference implementation (:class:`Predictor` on the same
``model.onnx`` runs exactly those steps).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from torch.export import ExportedProgram

from training.bundle import Bundle, BundleInfo
from training.export.metadata import INPUT_NAME, OUTPUT_NAME, size_rule
from training.export.onnx import DEFAULT_OPSET, export_onnx
from training.export.program import ExportError

#: Input pixels one batch may hold (4 Mi: eight 700 px tiles, four 1024 px tiles).
BATCH_PIXELS = 4 * 2**20
#: Largest batch the config allows, however small the tiles.
MAX_BATCH = 64
#: How long Triton may wait to fill a batch, microseconds.
QUEUE_DELAY_US = 100
MODEL_FILE = "model.onnx"
VERSION = "1"


def model_name(bundle: Bundle, name: str | None = None) -> str:
    """The Triton model name: ``name`` or the bundle file's stem, in letters, digits, ``-`` and ``_``."""
    chosen = name or (Path(bundle.path).stem if bundle.path else "tessera")
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", chosen).strip("_")
    if not cleaned:
        raise ExportError(f"model name {chosen!r} has no letters or digits")
    return cleaned


def max_batch(info: BundleInfo) -> int:
    """Largest batch: the power of two of tiles (``info.tile["input"]`` px squared) that fits
    :data:`BATCH_PIXELS`, between 1 and :data:`MAX_BATCH`."""
    tile = int(info.tile.get("input") or size_rule(info).min)
    fits = max(1, BATCH_PIXELS // (tile * tile))
    return min(MAX_BATCH, 1 << (fits.bit_length() - 1))


def output_dims(info: BundleInfo) -> list[int]:
    """Output dims without the batch: ``[K, -1, -1]`` for segmentation, ``[K]`` for a classifier."""
    classes = int(info.spec.get("num_classes", len(info.classes)))
    return [classes, -1, -1] if info.task == "segmentation" else [classes]


def input_dims(info: BundleInfo) -> list[int]:
    """Input dims without the batch: ``[C, -1, -1]``, or ``[C, S, S]`` for a fixed size ``S``."""
    rule = size_rule(info)
    side = -1 if rule.step else rule.min
    return [info.in_channels, side, side]


def config_text(name: str, info: BundleInfo) -> str:
    """The ``config.pbtxt`` of the model (protobuf text format of Triton's ``ModelConfig``)."""
    batch = max_batch(info)

    def dims(values: list[int]) -> str:
        return "[ " + ", ".join(map(str, values)) + " ]"

    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {batch}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: {dims(input_dims(info))}
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: {dims(output_dims(info))}
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {batch} ]
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
"""


def write_triton_repository(bundle: Bundle, directory: str | Path, name: str | None = None,
                            onnx_file: str | Path | None = None, opset: int = DEFAULT_OPSET,
                            program: ExportedProgram | None = None) -> Path:
    """Write the model repository entry of ``bundle`` under ``directory``; returns ``DIR/<name>``.

    ``onnx_file``: an ONNX export of the same bundle to copy (otherwise exported here with
    ``opset``, from ``program`` when given).
    """
    name = model_name(bundle, name)
    root = Path(directory) / name
    target = root / VERSION / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if onnx_file is not None:
        shutil.copyfile(onnx_file, target)
    else:
        export_onnx(bundle, target, opset=opset, program=program)
    (root / "config.pbtxt").write_text(config_text(name, bundle.info))
    (root / "README.md").write_text(client_readme(name, bundle.info))
    return root


def normalise_text(info: BundleInfo) -> str:
    """How the client turns raw pixels into the graph's input (the bundle's normalisation)."""
    norm = info.normalization
    scale = ("Scale raw pixels to [0, 1] by their integer type's maximum (uint8 / 255, uint16 / 65535; "
             "float images as they are), then standardise each channel: `(x - mean) / max(std, 1e-6)`")
    if norm.mode == "fixed":
        return f"{scale} with the fixed mean {list(norm.mean)} and std {list(norm.std)}."
    return (f"{scale}, where mean and std are each channel's statistics over the WHOLE image "
            "(population std), computed once per image, never per tile.")


def tiling_text(info: BundleInfo) -> str:
    """How the client cuts an image into tiles the graph takes and stitches the outputs."""
    geometry = info.geometry
    if info.task != "segmentation" or geometry is None:
        side = size_rule(info).min
        return (f"A classifier: resize each image to {side} x {side} px (area interpolation when shrinking, "
                f"bilinear when growing) and send batches of whole images; no tiling.")
    tile = int(info.tile.get("input") or geometry.min_input)
    output = geometry.output_size(tile)
    step = geometry.tile_step(tile)
    keep = f"the {step} x {step} px block starting {geometry.context - geometry.margin} px into its output"
    result = "exactly" if geometry.padding == "valid" else "up to rare label flips (same padding)"
    sizes = (f"Input sizes (height and width alike): {size_rule(info).rule} px. Default tile: {tile} x {tile} px "
             f"input, {output} x {output} px output (the network loses {geometry.margin} px per side).")
    grid = (f"Overlap-tile: tile (i, j) writes image pixels [i*{step}, (i+1)*{step}) x [j*{step}, (j+1)*{step}) "
            f"(clipped to the image). Its input window starts {geometry.context} px above and left of that block "
            f"and spans {tile} px; keep {keep}. Pixels of a window outside the image are mirrored without "
            "repeating the edge pixel (numpy `np.pad(mode=\"reflect\")`, OpenCV `BORDER_REFLECT_101`). All "
            f"windows then start on one {geometry.stride} px grid, and the stitched result equals one pass "
            f"over the whole mirror-padded image {result}.")
    return f"{sizes}\n\n{grid}"


def decision_text(info: BundleInfo) -> str:
    """How the client turns logits into labels (activation, then argmax or the threshold)."""
    classes = int(info.spec.get("num_classes", len(info.classes)))
    activation = "sigmoid (one logit)" if classes == 1 else "softmax over the class axis (axis 1)"
    if info.threshold is not None:
        rule = f"class 1 where its probability >= {info.threshold} (the bundle's calibrated threshold), else class 0."
    elif classes == 1:
        rule = "class 1 where p > 0.5."
    else:
        rule = "the argmax over classes (ties to the lower index)."
    return f"Probabilities: {activation} of `{OUTPUT_NAME}`. Labels: {rule}"


def client_readme(name: str, info: BundleInfo) -> str:
    """The README of a model repository entry: tensors, normalisation, tiling, decision."""
    dims = ", ".join(map(str, input_dims(info)))
    return f"""# {name}: a Tessera {info.task} model for Triton

Classes: {', '.join(f'{i} = {c}' for i, c in enumerate(info.classes))}.

Input `{INPUT_NAME}`: float32 `[batch, {dims}]` (NCHW), normalised pixels. Output `{OUTPUT_NAME}`:
float32 `[batch, {', '.join(map(str, output_dims(info)))}]`, raw logits. Up to {max_batch(info)} tiles per
request batch (`max_batch_size`; dynamic batching merges requests). `1/{MODEL_FILE}` carries the
whole bundle metadata in its `metadata_props` (key `tessera`).

## 1. Normalise

{normalise_text(info)}

## 2. Tile

{tiling_text(info)}

## 3. Decide

{decision_text(info)}

## Reference

`tessera predict 1/{MODEL_FILE} image.png -o labels.png` (or `Predictor("1/{MODEL_FILE}")` in
Python) runs these steps with ONNX Runtime on the same file; compare a client's labels with it.
"""
