"""``tessera predict``: segment one image of any size with exact overlap-tile inference.

The input is read lazily when it is a TIFF/BigTIFF or a zarr array (images larger than memory
work), decoded in memory otherwise (PNG, JPEG, BMP). The label map is written tile by tile to the
output, whose suffix chooses the format: .png (small images), .tif (tiled BigTIFF), .zarr (zarr v3,
chunks on the tile grid) or .npy. Labels are class indices (uint8; uint16 above 256 classes).
Outputs appear only when complete (temporary name, then rename).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from service.commands.inference import (
    add_bundle_argument,
    add_inference_options,
    prepare,
    progress_bar,
)
from training.errors import OptionError
from training.inference.predictor import Predictor
from training.inference.to_file import predict_to_file
from training.io.images import DEFAULT_MAX_PIXELS
from training.io.overlay import save_overlay
from training.io.readers import fit_channels, open_image
from training.io.writers import (
    PNG_MAX_PIXELS,
    PROBABILITY_DTYPES,
    ArraySink,
    label_dtype,
)

EXAMPLES = """\
examples:
  tessera predict default slice.png -o mask.png
        the shipped model ('-' works too); mask.png holds class indices 0, 1, ...
  tessera predict model.safetensors slide.tif -o labels.zarr --probabilities probs.zarr
        a large TIFF read lazily, labels and uint8 probabilities (round(255 p)) as zarr v3
  tessera predict model.safetensors image.png -o mask.png --overlay check.png --tta
        average the 8 flips/rotations, and draw the labels over the image
  tessera predict model.safetensors big.tif -o labels.tif --tile auto --batch-size 4
        measure the fastest tile size first; write a tiled BigTIFF
  tessera predict - huge.tif -o out.zarr --max-pixels 10000000000 --device cuda
  tessera predict groupnorm.safetensors slide.tif -o labels.zarr --blend gaussian --overlap 0.5
        a model that cannot tile exactly (instance/group norm): average overlapping tiles
"""

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment an image of any size (exact tiled inference)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bundle_argument(parser)
    parser.add_argument("input", help="image: PNG, JPEG, TIFF/BigTIFF (lazy), zarr (lazy)")
    parser.add_argument("-o", "--output", required=True, help="label map: .png, .tif, .zarr or .npy")
    parser.add_argument(
        "--probabilities", nargs="?", const="", metavar="PATH",
        help="also write per-class probabilities (K, H, W) to PATH (.tif, .zarr, .npy; default: next to the output)",
    )
    parser.add_argument("--probability-dtype", choices=tuple(PROBABILITY_DTYPES), default="uint8",
                        help="uint8 = round(255 p) (default), or float16 / float32")
    parser.add_argument("--overlay", metavar="PNG", help="also write the labels drawn over the image (small images)")
    add_inference_options(parser, DEFAULT_MAX_PIXELS, f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    parser.set_defaults(handler=run)


def probability_path(args: argparse.Namespace) -> Path | None:
    """Where probabilities go: the given path, or the output's name with '.probabilities'."""
    if args.probabilities is None:
        return None
    if args.probabilities:
        return Path(args.probabilities)
    output = Path(args.output)
    suffix = ".tif" if output.suffix.lower() == ".png" else output.suffix
    return output.with_name(f"{output.stem}.probabilities{suffix}")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    bundle, options = prepare(args)
    source = open_image(args.input, max_pixels=args.max_pixels)
    predictor = Predictor(bundle, options)
    source = fit_channels(source, predictor.info.in_channels)
    height, width = source.shape[:2]
    if args.overlay and height * width > PNG_MAX_PIXELS:
        raise OptionError(f"--overlay is for images up to {PNG_MAX_PIXELS:,} pixels; this one has {height * width:,}")
    probabilities = probability_path(args)
    drawn = np.zeros((height, width), label_dtype(predictor.num_classes)) if args.overlay else None
    shown = not args.quiet and len(predictor.grid(height, width)) > 1 and sys.stderr.isatty()
    bar, callback = progress_bar("segmenting tiles", shown)
    with bar:
        grid = predict_to_file(
            predictor, source, args.output, probabilities=probabilities, probability_dtype=args.probability_dtype,
            attributes={"source": str(args.input)}, also=ArraySink(drawn) if drawn is not None else None,
            progress=callback,
        )
    if drawn is not None:
        save_overlay(args.overlay, np.asarray(source[0:height, 0:width]), drawn)
    summary = {
        "output": str(args.output),
        "probabilities": str(probabilities) if probabilities else None,
        "overlay": args.overlay,
        "size": [height, width],
        "classes": predictor.info.classes,
        "tile": [grid.tile_h, grid.tile_w],
        "tiles": len(grid),
        "blend": predictor.blend,
        "device": str(predictor.device),
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary))
    return 0
