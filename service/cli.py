"""The ``tessera`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module under :mod:`service.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning an exit code. Errors meant for the user are raised as :class:`UserError`
(or the library's ``ValueError`` subclasses) and printed as one line, with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Sub-command modules, in the order ``tessera --help`` lists them.
COMMANDS = ("info", "train", "train_classifier", "evaluate", "predict", "batch", "serve")

EPILOG = """\
examples:
  tessera info                               the shipped default model, as JSON
  tessera info --arch unet --size 572        the paper's U-Net: margin, valid tile sizes
  tessera info --arch smp.Unet:resnet34      an smp model

Run 'tessera COMMAND --help' for each command's options and examples.
"""


class UserError(Exception):
    """A problem with the user's input, printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: U-Net image segmentation, exact tiling of images of any size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"service.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
