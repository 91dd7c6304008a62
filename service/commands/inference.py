"""Options and helpers shared by the sub-commands that run the predictor (predict, batch, serve).

One definition of: what names mean the shipped model, the predictor's options (tile, batch size,
device, TTA, blending, threshold) and how they become one
:class:`~training.inference.options.InferenceOptions`, the run options (pixel limit, threads,
progress), and the rich progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from training.bundle import DEFAULT_BUNDLE, DEFAULT_NAMES
from training.device import set_cpu_threads
from training.errors import OptionError
from training.inference.blending import BLEND_MODES, DEFAULT_OVERLAP
from training.inference.options import InferenceOptions
from training.inference.tta import TTA_MODES


def add_bundle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help=f"model bundle (.safetensors), or '-' / 'default' for the shipped {DEFAULT_BUNDLE.name}")


def add_predictor_options(parser: argparse.ArgumentParser) -> None:
    """--tile, --halo, --precision, --batch-size, --device, --tta, --blend, --overlap, --threshold: the fields of
    :class:`~training.inference.options.InferenceOptions` (read back by :func:`inference_options`)."""
    parser.add_argument("--tile", default=None,
                        help="tile input size in pixels, or 'auto': measure each size's speed once and choose per "
                             "image by speed and grid fit (default: the bundle's tile; auto for same-padded models)")
    parser.add_argument("--halo", default=None, metavar="default|exact|N",
                        help="same-padded models: the halo preset measured from agreement with the whole-image pass "
                             "(default: 0.1%% of labels may differ, exact: 1e-4), or N pixels (warns with the "
                             "measured agreement at N); default: the bundle's")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: bf16/fp16 autocast on CUDA, float32 on the CPU; float32: no autocast")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (halved on out-of-memory)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--tta", nargs="?", const="d4", default="none", choices=tuple(TTA_MODES),
                        help="test-time augmentation: flips (4) or d4 (8 flips/rotations; the default when given)")
    parser.add_argument("--blend", default="none", choices=BLEND_MODES,
                        help="none: exact crop-only stitching (default); gaussian: overlapping tiles averaged with "
                             "Gaussian weights, for instance/group-norm models whose tiles cannot be exact")
    parser.add_argument("--overlap", type=float, default=None,
                        help=f"with --blend gaussian: share of a tile its neighbour repeats (default {DEFAULT_OVERLAP})")
    add_threshold_option(parser)


def add_inference_options(parser: argparse.ArgumentParser, max_pixels: int | None, max_pixels_help: str) -> None:
    """The predictor's options (:func:`add_predictor_options`) and --max-pixels, --threads, --quiet."""
    add_predictor_options(parser)
    parser.add_argument("--max-pixels", type=int, default=max_pixels, help=max_pixels_help)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The :class:`~training.inference.options.InferenceOptions` the predictor options give
    (ValueError naming the option that is wrong)."""
    if args.overlap is not None and args.blend == "none":
        raise OptionError("--overlap applies to --blend gaussian only (crop-only tiles do not overlap)")
    return InferenceOptions(
        tile=parse_tile(args.tile), batch_size=args.batch_size, tta=args.tta, blend=args.blend,
        overlap=DEFAULT_OVERLAP if args.overlap is None else args.overlap,
        threshold=parse_threshold(args.threshold), device=args.device,
        halo=args.halo, precision=args.precision,
    )


def prepare(args: argparse.Namespace) -> tuple[str | None, InferenceOptions]:
    """Apply --threads; the bundle path (None: the shipped model) and the inference options."""
    if args.threads:
        set_cpu_threads(args.threads)
    return (None if args.bundle in DEFAULT_NAMES else args.bundle), inference_options(args)


def parse_tile(text: str | None) -> int | str | None:
    """--tile as the Predictor takes it: None, "auto" or a number of pixels."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"--tile must be a number of pixels or 'auto', not {text!r}") from None


def add_threshold_option(parser: argparse.ArgumentParser) -> None:
    """--threshold: how two-class labels come from probabilities (:func:`parse_threshold`)."""
    parser.add_argument("--threshold", default=None, metavar="P|argmax",
                        help="two-class models: class 1 where its probability >= P, or 'argmax' "
                             "(default: the bundle's calibrated threshold, argmax if it has none)")


def parse_threshold(text: str | None) -> float | str | None:
    """--threshold as the Predictor takes it: "bundle" (not given), None (argmax) or a probability."""
    if text is None:
        return "bundle"
    if text == "argmax":
        return None
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"--threshold must be a probability between 0 and 1 or 'argmax', not {text!r}") from None


def print_summary(predictor, grid, started: float, **fields) -> int:
    """Print the one-line JSON summary of a prediction (``fields`` first, then the run's
    classes, tiles, blending, device and seconds since ``started``); the exit code 0."""
    summary = {
        **fields,
        "classes": predictor.info.classes,
        "tile": [grid.tile_h, grid.tile_w],
        "tiles": len(grid),
        "blend": predictor.blend,
        "device": str(predictor.device),
    }
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - started, 3)}))
    return 0


def progress_bar(label: str, enabled: bool):
    """A rich progress bar on stderr (or nothing) and a ``(done, total, *_, note="")`` callback
    (``note``, e.g. how many tiles were skipped, shown after the label)."""
    if not enabled:
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True))
    task = bar.add_task(label, total=None)

    def update(done: int, total: int, *_, note: str = "") -> None:
        bar.update(task, completed=done, total=total, description=f"{label} ({note})" if note else label)

    return bar, update
