"""``tessera export``: a bundle's network for other runtimes, its metadata kept with the graph.

``-o model.onnx`` writes ONNX (dynamic batch, dynamic height and width where the network allows,
the bundle's metadata in ``metadata_props``); ``-o model.pt2`` a ``torch.export`` program (metadata
in ``model.pt2.json`` beside it); ``--triton DIR`` a Triton model repository entry
(``DIR/<name>/1/model.onnx``, ``config.pbtxt``, a README on normalising, tiling and deciding).
One capture serves every output. Each file is then loaded back and run on a random input of valid
size; the largest |logit difference| from the bundle is printed (JSON) with the accepted sizes.

Exported files run through the same tiler: ``tessera predict model.onnx ...``,
``tessera serve model.onnx``, ``tessera batch model.onnx ...`` (ONNX needs ``onnxruntime``:
``pip install 'tessera[export]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """\
examples:
  tessera export default -o model.onnx
        the shipped model as ONNX (opset 18); input sizes 188 + 16k px, any batch
  tessera export default -o model.onnx -o model.pt2 --opset 20
        ONNX at opset 20 and a torch.export program (metadata in model.pt2.json)
  tessera export default --triton triton-models --name membranes
        a Triton model repository: triton-models/membranes/{config.pbtxt,1/model.onnx,README.md}
  tessera predict model.onnx training/assets/isbi2012/image/25.png -o mask.png
        the exported graph through the same exact tiler (ONNX Runtime)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a bundle to ONNX, torch.export (.pt2) or a Triton model repository",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", help="model bundle (.safetensors), or '-' / 'default' for the shipped model")
    parser.add_argument("-o", "--output", action="append", default=[], metavar="PATH",
                        help="file to write: .onnx or .pt2 (repeat for both)")
    parser.add_argument("--triton", metavar="DIR", help="also write a Triton model repository entry under DIR")
    parser.add_argument("--name", help="Triton model name (default: the bundle file's stem)")
    parser.add_argument("--opset", type=int, help="ONNX opset, 18 to 23 (default 18)")
    parser.add_argument("--no-check", action="store_true", help="skip running each export against the bundle")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.bundle import bundle_path, load_bundle
    from training.export.onnx import DEFAULT_OPSET, check_opset
    from training.export.program import (
        ONNX_SUFFIX,
        PROGRAM_SUFFIX,
        ExportError,
        capture,
    )

    outputs = [Path(p) for p in args.output]
    if not outputs and not args.triton:
        raise ExportError("nothing to write: give -o model.onnx, -o model.pt2 and/or --triton DIR")
    for path in outputs:
        if path.suffix not in (ONNX_SUFFIX, PROGRAM_SUFFIX):
            raise ExportError(f"{path}: exports end in {ONNX_SUFFIX} (ONNX) or {PROGRAM_SUFFIX} (torch.export)")
    opset = check_opset(args.opset if args.opset is not None else DEFAULT_OPSET)
    bundle = load_bundle(bundle_path(args.bundle))
    program = capture(bundle)
    written = [write(bundle, path, opset, program) for path in outputs]
    report = {"bundle": str(bundle.path), "outputs": written}
    if args.triton:
        report["triton"] = write_triton(bundle, args, opset, program, outputs)
    if not args.no_check:
        for entry in written:
            entry["max_abs_logit_diff"] = check(bundle, Path(entry["path"]))
    print(json.dumps(report, indent=2))
    return 0


def write(bundle, path: Path, opset: int, program) -> dict:
    """Write one export; its description for the report."""
    from training.export.metadata import size_rule
    from training.export.onnx import export_onnx
    from training.export.program import ONNX_SUFFIX, export_program

    if path.suffix == ONNX_SUFFIX:
        export_onnx(bundle, path, opset=opset, program=program)
        entry = {"path": str(path), "format": "onnx", "opset": opset}
    else:
        export_program(bundle, path, program=program)
        entry = {"path": str(path), "format": "pt2", "metadata": str(path) + ".json"}
    return {**entry, "input_sizes": size_rule(bundle.info).rule}


def write_triton(bundle, args: argparse.Namespace, opset: int, program, outputs: list[Path]) -> str:
    """Write the Triton repository entry (copying an ONNX file just written, if any)."""
    from training.export.program import ONNX_SUFFIX
    from training.export.triton import write_triton_repository

    onnx_file = next((p for p in outputs if p.suffix == ONNX_SUFFIX), None)
    root = write_triton_repository(bundle, args.triton, name=args.name, onnx_file=onnx_file, opset=opset,
                                   program=program)
    return str(root)


def check(bundle, path: Path) -> float | None:
    """Largest |logit difference| between ``bundle`` and its export at ``path`` on a random input
    of valid size; None when the runtime is not installed."""
    import torch

    from training.bundle import load_bundle
    from training.export.metadata import size_rule
    from training.export.program import example_input
    from training.inference.backends.onnxruntime import MissingRuntime

    try:
        exported = load_bundle(path)
    except MissingRuntime:
        return None
    batch = example_input(bundle.info, size_rule(bundle.info))
    with torch.no_grad():
        return float((exported.model(batch) - bundle.model(batch)).abs().max())
