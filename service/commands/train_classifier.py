"""``tessera train-classifier``: train a backbone as an image classifier on a folder of class
sub-folders, and write a classification bundle whose encoder ``tessera train`` can start from
(``--set model.encoder_weights=THIS.safetensors`` with an smp architecture of the same encoder).

Layout: ``DATA/<class name>/<image>`` (PNG, JPEG, TIFF; gray or RGB), one sub-folder per class.
Images are resized to ``--size`` pixels and normalised per image. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

EXAMPLES = """\
examples:
  tessera train-classifier data/digits/train --output digits.safetensors
  tessera train-classifier data/train --val data/val --encoder resnet18 --size 64 --epochs 20 \\
      --output backbone.safetensors
  tessera train --config my.yaml --arch smp.Unet:resnet18 \\
      --set model.encoder_weights=backbone.safetensors --set model.freeze_encoder_epochs=5
      then start a segmentation model's encoder from it (frozen for the first 5 epochs)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from training.loop.classify import ClassifierConfig

    d = ClassifierConfig()
    parser = subparsers.add_parser(
        "train-classifier",
        help="train a backbone as an image classifier (class sub-folders)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="folder with one sub-folder of images per class")
    parser.add_argument("--output", required=True, help="bundle to write (.safetensors)")
    parser.add_argument("--val", help="validation folder (same classes); default: hold out --val-fraction")
    parser.add_argument("--encoder", default=d.encoder, help=f"smp encoder (default {d.encoder})")
    parser.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--shift", type=int, default=d.shift, help="random translation in pixels")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--device", default=d.device)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.loop.classify import ClassifierConfig, train_classifier

    config = ClassifierConfig(
        encoder=args.encoder, size=args.size, epochs=args.epochs, max_minutes=args.max_minutes,
        batch_size=args.batch_size, lr=args.lr, shift=args.shift, val_fraction=args.val_fraction,
        seed=args.seed, threads=args.threads, device=args.device,
    )
    result = train_classifier(
        args.data, args.output, config, val_data=args.val, command=shlex.join(["tessera", *sys.argv[1:]]),
        log=lambda line: print(line, file=sys.stderr),
    )
    print(json.dumps(result, indent=2))
    return 0
