"""``tessera evaluate``: score a segmentation bundle on images with masks, as JSON.

Each image is predicted whole through the same tiled Predictor as ``tessera predict`` and compared
with its mask: pixel error, Dice and IoU per class and their means (pooled over all pixels), and
the adapted Rand error of the interior class (two-class tasks; ISBI: ``cell``). Masks are read as
``tessera train`` reads them (paired by stem, ``classes.yaml`` beside them).
"""

from __future__ import annotations

import argparse
import json

from service.commands.inference import add_threshold_option, parse_threshold, parse_tile
from service.commands.labelled import add_dataset_options, labelled_folder
from training.data.dataset import ISBI_HOLDOUT
from training.inference.predictor import TTA_MODES

EXAMPLES = """\
examples:
  tessera evaluate                                    the shipped model on ISBI hold-out slices 25-29
  tessera evaluate runs/isbi2012/best.safetensors --isbi
  tessera evaluate model.safetensors --images data/img --masks data/mask --select 20-29
  tessera evaluate model.safetensors --images data/img --masks data/mask --overlays out/overlays
      also write one PNG per image: image | truth | prediction with errors in red
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of a bundle on images with masks (JSON)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", nargs="?", help="a bundle file (default: the shipped model)")
    add_dataset_options(parser, "the shipped ISBI 2012 hold-out slices 25-29")
    parser.add_argument("--isbi", action="store_true", help="the shipped ISBI 2012 hold-out slices 25-29")
    parser.add_argument("--overlays", help="folder for one overlay PNG per image")
    parser.add_argument("--rand-class", help="class whose components the adapted Rand error compares")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tile", help="tile input size, or 'auto' (default: the bundle's)")
    parser.add_argument("--tta", choices=tuple(TTA_MODES), default="none", help="test-time augmentation")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    add_threshold_option(parser)
    parser.add_argument("--per-image", action="store_true", help="include each image's metrics")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.device import set_cpu_threads
    from training.loop.evaluate import evaluate_bundle

    tile = parse_tile(args.tile)
    if args.threads:
        set_cpu_threads(args.threads)
    result = evaluate_bundle(
        args.bundle,
        labelled_folder(args, ISBI_HOLDOUT),
        device=args.device,
        tile=tile,
        tta=args.tta,
        threshold=parse_threshold(args.threshold),
        overlays=args.overlays,
        rand_class=args.rand_class,
    )
    if not args.per_image:
        result.pop("images")
    print(json.dumps(result, indent=2))
    return 0
