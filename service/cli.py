"""The ``tessera`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module under :mod:`service.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning an exit code. Only the module of the sub-command being run is imported
(the others pull in PyTorch): ``tessera --help`` answers at once. Errors meant for the user are raised as :class:`UserError`
(or the library's ``ValueError`` subclasses) and printed as one line, with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Sub-command -> (module in service.commands, one-line summary), in the order --help lists them.
COMMANDS = {
    "info": ("info", "describe a model bundle or an architecture (JSON)"),
    "train": ("train", "train a segmentation model (YAML config + overrides)"),
    "train-classifier": ("train_classifier", "train a backbone as an image classifier (class sub-folders)"),
    "evaluate": ("evaluate", "metrics of a bundle on images with masks (JSON)"),
    "calibrate": ("calibrate", "choose a bundle's decision threshold on images with masks"),
    "label-offset": ("label_offset", "measure how far masks sit off what they trace (JSON)"),
    "predict": ("predict", "segment an image of any size (exact tiled inference)"),
    "batch": ("batch", "segment a folder of images or one gigapixel image (resumable, Dask)"),
    "serve": ("serve", "serve a model over HTTP (BentoML)"),
    "export": ("export", "export a bundle to ONNX, torch.export (.pt2) or a Triton model repository"),
}

EPILOG = """\
examples:
  tessera info                               the shipped default model, as JSON
  tessera info --arch unet --size 572        the paper's U-Net: margin, valid tile sizes
  tessera info --arch smp.Unet:resnet34      an smp model

Run 'tessera COMMAND --help' for each command's options and examples.
"""


class UserError(Exception):
    """A problem with the user's input, printed without a traceback."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full parser of the sub-command named in ``argv`` (all of them when
    ``argv`` is None) and a summary-only one for the rest."""
    chosen = set(COMMANDS) if argv is None else {next((a for a in argv if not a.startswith("-")), None)}
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: U-Net image segmentation, exact tiling of images of any size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        if name in chosen:
            importlib.import_module(f"service.commands.{module}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, description=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (UserError, ValueError, OSError) as error:
        print(f"tessera {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tessera {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
