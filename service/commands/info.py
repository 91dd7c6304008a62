"""``tessera info``: what a bundle, an architecture or a whole-slide image is, as JSON.

For a model: parameter count, margin (pixels lost per side), halo, stride, the valid tile input
sizes near a requested size with their output sizes, classes, normalisation and decision threshold.
For a slide (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF, OME-TIFF ...): its format, the reader that
opens it, its levels (width, height, downsample, mpp) and objective power.
"""

from __future__ import annotations

import argparse
import json

from training.bundle import DEFAULT_BUNDLE, load_bundle, model_geometry
from training.geometry import TileGeometry
from training.models import build_model, count_parameters, parse_arch

EXAMPLES = """\
examples:
  tessera info                                   the shipped default model
  tessera info path/to/model.safetensors --size 1024
  tessera info --arch unet --norm none           the 2015 paper's U-Net (31,030,658 parameters)
  tessera info --arch unet --padding same --depth 3 --width 16
  tessera info --arch smp.Unet:resnet34 --in-channels 3
  tessera info slide.svs                         levels, sizes, mpp and objective power of a slide
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a model bundle or an architecture (JSON)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", nargs="?",
                        help=f"a bundle file or a slide (default: the shipped model, {DEFAULT_BUNDLE.name})")
    parser.add_argument("--arch", help="describe an architecture instead: unet | smp.<Arch>:<encoder>")
    parser.add_argument("--size", type=int, default=572, help="tile input size to list valid sizes around (default 572)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=2, help="number of classes (with --arch)")
    parser.add_argument("--depth", type=int, help="U-Net depth (number of poolings; paper: 4)")
    parser.add_argument("--width", type=int, help="U-Net channels at the first level (paper: 64)")
    parser.add_argument("--padding", choices=("valid", "same"), help="U-Net convolution padding")
    parser.add_argument("--norm", choices=("batch", "instance", "none"), help="U-Net normalisation")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.bundle and not args.arch and is_slide(args.bundle):
        print(json.dumps(describe_slide(args.bundle), indent=2))
        return 0
    if args.arch:
        options = {"depth": args.depth, "width": args.width, "padding": args.padding, "norm": args.norm}
        if args.arch != "unet":
            options = {}
        spec = parse_arch(args.arch, args.in_channels, args.classes, **options)
        model = build_model(spec)
        geometry = model_geometry(model, args.in_channels)
        described = {"spec": spec, "classes": args.classes, "normalization": None}
    else:
        bundle = load_bundle(args.bundle or DEFAULT_BUNDLE)
        model, geometry = bundle.model, bundle.info.geometry
        described = {
            "bundle": str(bundle.path),
            "spec": bundle.info.spec,
            "classes": bundle.info.classes,
            "normalization": bundle.info.normalization.to_dict(),
            "tile": bundle.info.tile,
            "threshold": bundle.info.threshold,
            "tta_thresholds": bundle.info.tta_thresholds,
            "metrics": bundle.info.metrics,
            "provenance": bundle.info.provenance,
        }
    # an exported file's runtime has no torch parameters: its export record counted them
    record = getattr(model, "record", None)
    parameters = count_parameters(model) or getattr(record, "parameters", None)
    described = {"parameters": parameters, **describe_geometry(geometry, args.size), **described}
    print(json.dumps(described, indent=2))
    return 0


def describe_geometry(geometry: TileGeometry, size: int) -> dict:
    """Margin, halo, stride and the valid tile sizes around ``size`` with their outputs."""
    near = geometry.valid_inputs_near(size)
    return {
        "padding": geometry.padding,
        "depth": geometry.depth,
        "margin": geometry.margin,
        "halo": geometry.context,
        "stride": geometry.stride,
        "min_input": geometry.min_input,
        "requested_size_valid": geometry.is_valid_input(size),
        "valid_sizes": [{"input": n, "output": geometry.output_size(n), "step": _step(geometry, n)} for n in near],
    }


def is_slide(path: str) -> bool:
    """True for a file that is not a bundle and is named or shaped like a whole-slide image."""
    from training.io.slides import is_slide_path

    return not path.endswith(".safetensors") and is_slide_path(path)


def describe_slide(path: str) -> dict:
    """The slide's format, reader, levels (width, height, downsample, mpp) and objective power."""
    from training.io.slides import open_slide

    with open_slide(path) as slide:
        return slide.info.to_dict()


def _step(geometry: TileGeometry, size: int) -> int | None:
    try:
        return geometry.tile_step(size)
    except ValueError:
        return None
