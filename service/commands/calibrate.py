"""``tessera calibrate``: choose a two-class bundle's decision threshold on images with masks.

A pixel is class 1 (ISBI: ``cell``) where its probability is at or above the threshold. Each
image is predicted whole through the same tiled Predictor as ``tessera predict``, and the
threshold among 0.05, 0.10, ..., 0.95 that scores best on ``--by`` is written into a copy of the
bundle (``-o``), once without test-time augmentation and once for each ``--tta`` mode (averaged
views change the probabilities). Training does the same with ``run.threshold: calibrate``; this
command re-chooses after the fact, by another metric or on other images. Calibrate on images the
model trained on or on a calibration set, never on the images you report figures for. The
bundle's ``metrics`` stay the ones training logged, at the thresholds recorded as ``replaced`` in
``provenance.calibration``; ``tessera evaluate`` scores the new ones.

``--halo [default|exact]`` calibrates a same-padded bundle's halo instead (any number of classes):
for halos on the stride grid, the tiled labels are compared with one whole-image pass on the
images (laid into 1024² mosaics), and the smallest halo whose labels agree on all but 0.1% of the
pixels (``default``) and all but 1e-4 (``exact``) is stored with its measured agreement
(:mod:`training.inference.halo`); the named preset becomes the halo the bundle predicts with
(``tessera predict --halo`` picks another). The decision threshold is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.commands.labelled import add_dataset_options, labelled_folder
from training.bundle import BundleError
from training.data.dataset import ISBI_TRAIN
from training.errors import OptionError
from training.loop.config import CALIBRATION_METRICS

EXAMPLES = """\
examples:
  tessera calibrate runs/isbi2012/best.safetensors -o model.safetensors --by pixel_error
      the shipped ISBI 2012 training slices 0, 5, 10, 15, 20, as training calibrates
  tessera calibrate model.safetensors -o calibrated.safetensors --images data/img --masks data/mask \\
      --select 0-9 --by rand_error --tta flips --tta d4
  tessera calibrate smp.safetensors -o smp-halo.safetensors --halo
      the halo of a same-padded (smp) bundle from agreement with the whole-image pass
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose a bundle's decision threshold on images with masks",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", help="a two-class bundle file")
    parser.add_argument("-o", "--output", required=True, help="the calibrated bundle to write (.safetensors)")
    add_dataset_options(parser, "the shipped ISBI 2012 training slices 0, 5, 10, 15, 20")
    parser.add_argument("--by", choices=tuple(CALIBRATION_METRICS), default="pixel_error",
                        help="the metric the threshold is chosen by (default: pixel_error)")
    parser.add_argument("--tta", action="append", choices=("flips", "d4"), default=None,
                        help="also calibrate for this test-time augmentation (repeatable; default: the "
                             "modes the bundle already has thresholds for)")
    parser.add_argument("--halo", nargs="?", const="default", choices=("default", "exact"), default=None,
                        help="measure a same-padded bundle's halo instead of the threshold; the preset "
                             "named (default: default, 0.1%% of labels may differ; exact: 1e-4) becomes "
                             "the bundle's halo")
    parser.add_argument("--rand-class", help="class whose components the adapted Rand error compares")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.bundle import SUFFIX, load_bundle, save_bundle
    from training.device import set_cpu_threads
    from training.inference.predictor import tta_caveat
    from training.loop.evaluate import (
        calibrate_bundle,
        calibration_subset,
        check_classes,
        interior_class,
    )

    if Path(args.output).suffix != SUFFIX:
        raise BundleError(f"{args.output}: bundle files end in {SUFFIX}")
    if args.threads:
        set_cpu_threads(args.threads)
    bundle = load_bundle(args.bundle)
    folder = labelled_folder(args, calibration_subset(ISBI_TRAIN))
    if args.halo is not None:
        return calibrate_halo(args, bundle, [folder.load(index) for index in range(len(folder))])
    check_classes(folder, bundle.info.classes)
    examples = [folder.load(index) for index in range(len(folder))]
    interior = interior_class(bundle.info.classes, args.rand_class)
    modes = tuple(dict.fromkeys(("none", *(args.tta if args.tta is not None else sorted(bundle.info.tta_thresholds)))))
    for mode in modes:
        caveat = tta_caveat(bundle.info, mode)
        if caveat is not None:
            print(f"tessera calibrate: warning: --tta {mode}: {caveat}", file=sys.stderr)
    info = bundle.info
    replaced = {"threshold": info.threshold, "tta_thresholds": info.tta_thresholds}
    _, scores = calibrate_bundle(bundle, examples, args.by, interior, modes, device=args.device)
    info.provenance["calibration"] = {
        "by": args.by,
        "images": [e.name for e in examples],
        "threshold": info.threshold,
        "tta_thresholds": info.tta_thresholds,
        "scores": scores,
        "from": str(args.bundle),
        "replaced": replaced,
    }
    path = save_bundle(args.output, bundle.model, info)
    print(json.dumps({"bundle": str(path), **info.provenance["calibration"]}, indent=2))
    return 0


def calibrate_halo(args: argparse.Namespace, bundle, examples: list) -> int:
    """``--halo``: scan the halo on the examples' images, store it, make ``args.halo`` the bundle's."""
    import dataclasses

    from training.bundle import save_bundle
    from training.inference.halo import measure_bundle_halo

    if bundle.info.geometry.padding != "same":
        raise OptionError(f"{args.bundle}: a valid-padded U-Net; its halo is its margin "
                         f"({bundle.info.geometry.margin} px) and tiles are exact, nothing to calibrate")
    measured = measure_bundle_halo(bundle, [e.image for e in examples], device=args.device)
    info = measured.info
    presets = info.halo["presets"]
    info = dataclasses.replace(info, geometry=dataclasses.replace(info.geometry, halo=presets[args.halo]["halo"]))
    info.halo["preset"] = args.halo
    info.provenance["halo_calibration"] = {"images": [e.name for e in examples], "from": str(args.bundle)}
    path = save_bundle(args.output, measured.model, info)
    for name, preset in presets.items():
        if not preset["reached"]:
            print(f"tessera calibrate: warning: no halo up to {max(map(int, info.halo['agreement']))} px reaches "
                  f"the {name} preset ({preset['target']:.4%}); the best measured, {preset['halo']} px, agrees on "
                  f"{preset['agreement']:.4%}", file=sys.stderr)
    print(json.dumps({"bundle": str(path), "halo": info.geometry.halo, **info.halo}, indent=2))
    return 0
