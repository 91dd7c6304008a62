"""The ``tessera`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module under :mod:`service.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning an exit code. Only the module of the sub-command being run is imported
(the others pull in PyTorch): ``tessera --help`` answers at once.

How a run ends, and its exit code (the help's "exit codes" section):

- 0: done;
- 1: a batch job finished with failed inputs (each named in its report), or a bug: anything not
  below, shown with its traceback;
- 2: bad arguments or input: argparse's usage errors and every :class:`~training.errors.TesseraError`,
  printed as one line ``tessera COMMAND: error: MESSAGE``;
- 3: the machine could not do the job: disk full or over quota, permission denied, a read-only file
  system, out of memory; one line naming the path (or the memory) and what to do;
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

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
}

EPILOG = """\
examples:
  tessera info                               the shipped default model, as JSON
  tessera info --arch unet --size 572        the paper's U-Net: margin, valid tile sizes
  tessera info --arch smp.Unet:resnet34      an smp model

Run 'tessera COMMAND --help' for each command's options and examples.

exit codes:
  0    done
  1    a batch job finished with failed inputs (listed in its report), or an internal error
       (a bug: its traceback is shown)
  2    bad arguments or input (one line saying what to fix)
  3    the machine could not do the job: no space left on the device, permission denied, or out
       of memory (one line naming the path and what to do)
  130  interrupted
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: errno values of a full disk or an exhausted quota.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values of a path the process may not write (or read): permissions, a read-only file system.
DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: errno values of a path that cannot be what it was asked to be (a file where a folder must go ...).
BAD_PATH = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


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
    """Run one sub-command; the exit code as the module docstring lists them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"tessera {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # sorted into bad input, the machine's failures and bugs
        return report_error(args, error)


def report_error(args: argparse.Namespace, error: Exception) -> int:
    """Print ``error`` for the user of ``tessera COMMAND`` and return the exit code: one line for bad
    input (2) and for a failure of the machine (3), the traceback for anything else (a bug, 1)."""
    # Imported here, not at the top: 'tessera --help' does not import training.
    from training.errors import TesseraError

    message = " ".join(str(error).split()) if isinstance(error, TesseraError) else user_path_message(error, args)
    if message is not None:
        print(f"tessera {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    message = environment_message(error, args)
    if message is not None:
        print(f"tessera {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    traceback.print_exception(error, file=sys.stderr)
    print(f"tessera {args.command}: internal error (a bug; the traceback above says where)", file=sys.stderr)
    return EXIT_FAILED


def user_path_message(error: BaseException, args: argparse.Namespace) -> str | None:
    """One line when ``error`` is about a path the user gave, or a folder on its way, that cannot
    be what the command needs (a file where a folder must go, a name too long ...); None otherwise,
    so that such an error about a path Tessera chose itself still shows as the bug it is."""
    if not isinstance(error, OSError) or error.errno not in BAD_PATH or error.filename is None:
        return None
    failing = Path(os.fsdecode(error.filename)).absolute()
    for value, given in path_arguments(args):
        if failing == given or failing in given.parents:
            return f"{value}: cannot use this path ({error.strerror}: {os.fsdecode(error.filename)})"
    return None


def environment_message(error: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure of the machine behind ``error`` (or behind what caused it): a full disk,
    a denied path, exhausted memory; None when it is none of these. The path is the failing call's
    file name, else the command's output (``--output`` / ``DST``)."""
    chain = list(causes(error))
    named = next((e.filename for e in chain if isinstance(e, OSError) and e.filename is not None), None)
    if named is not None:
        path = given_path(named, args)
    else:
        path = getattr(args, "output", None) or getattr(args, "dst", None) or "(unknown path)"
    for cause in chain:
        if isinstance(cause, MemoryError) or is_out_of_memory(cause):
            return "out of memory: use a smaller --tile or --batch-size (train: patch.size, patch.batch_size)"
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            return f"no space left on device writing {path}: free space or choose another output folder"
        if isinstance(cause, OSError) and cause.errno in DENIED:
            if cause.errno == errno.EROFS:
                return f"read-only file system: {path}: choose an output folder on a writable disk"
            return f"permission denied: {path}: choose a path this user may use, or change its permissions"
    return None


def given_path(filename: str | bytes, args: argparse.Namespace) -> str:
    """``filename``, or the argument it is the temporary of (outputs are written to ``.NAME.*.tmp``
    beside ``NAME``, then renamed): the message names the path the user gave."""
    failing = Path(os.fsdecode(filename)).absolute()
    for value, given in path_arguments(args):
        if failing.parent == given.parent and failing.name.startswith(f".{given.name}."):
            return value
    return os.fsdecode(filename)


def path_arguments(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Every text argument of the command with its absolute path (any of them may name a file)."""
    return [(value, Path(value).absolute()) for value in vars(args).values() if isinstance(value, str) and value]


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions behind it, as Python's traceback shows them (explicit cause,
    else the exception being handled unless suppressed with ``from None``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def is_out_of_memory(error: BaseException) -> bool:
    """PyTorch's CUDA or CPU allocation failure (only asked once PyTorch is loaded)."""
    if "torch" not in sys.modules:
        return False
    from training.device import is_out_of_memory as torch_out_of_memory

    return torch_out_of_memory(error)


if __name__ == "__main__":
    sys.exit(main())
