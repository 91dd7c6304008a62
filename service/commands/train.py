"""``tessera train``: train a segmentation model from a YAML config and command-line overrides.

Settings come from ``--config FILE`` (see ``configs/isbi2012.yaml``, the recipe of the shipped
model), then ``--set section.key=value`` overrides, then the shortcut flags below (each is one
``--set``). The run writes into ``--output``: ``best.safetensors`` and ``last.safetensors``
bundles, ``metrics.csv``/``metrics.json`` per epoch, ``curves.png``, ``overlays/*.png``, and the
state ``--resume`` continues from. ``--export PATH`` copies the best bundle to PATH at the end.
A JSON summary is printed on stdout when training ends.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.bundle import BundleError
from training.loop.config import load_config

EXAMPLES = """\
examples:
  tessera train --config configs/isbi2012.yaml
      the shipped default recipe (ISBI 2012 membranes, classic valid U-Net)
  tessera train --config configs/isbi2012.yaml --max-minutes 5 --output runs/quick
      the same, stopped after 5 minutes of wall time (summed over resumed sittings)
  tessera train --images data/img --masks data/mask --set data.val='[7-9]' --epochs 30
      your own folders (paired by file stem); the stems 7 to 9 held out ('[pos:0-2]': the
      first three in natural stem order)
  tessera train --config my.yaml --arch smp.Unet:resnet18 --set patch.size=256 \\
      --set model.encoder_weights=classifier.safetensors --set model.freeze_encoder_epochs=5
      an smp model whose encoder starts from 'tessera train-classifier' and is frozen 5 epochs
  tessera train --images data/img --masks data/mask --init default --lr 5e-4 --max-minutes 20
      fine-tune the shipped model on your folders (its U-Net and weights; a new output layer
      if your masks have other than 2 classes)
  tessera train --config my.yaml --set optim.name=sgd --set optim.lr=0.01 --set optim.momentum=0.99
      the paper's SGD with momentum 0.99 (poly learning-rate decay)
  tessera train --config my.yaml --output runs/a --resume
      continue exactly where runs/a stopped
"""

#: Shortcut flags -> the dotted config key each sets.
SHORTCUTS = {
    "images": "data.images",
    "masks": "data.masks",
    "arch": "model.arch",
    "init": "model.init",
    "epochs": "run.epochs",
    "max_minutes": "run.max_minutes",
    "batch_size": "patch.batch_size",
    "lr": "optim.lr",
    "seed": "run.seed",
    "workers": "run.workers",
    "device": "run.device",
    "threads": "run.threads",
    "output": "run.output",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model (YAML config + overrides)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. optim.lr=1e-3 (repeatable)")
    parser.add_argument("--images", help="folder of training images")
    parser.add_argument("--masks", help="folder of masks (same file stems)")
    parser.add_argument("--arch", help="unet | smp.<Arch>:<encoder> (e.g. smp.Unet:resnet18)")
    parser.add_argument("--init", help="fine-tune: start from this segmentation bundle's network and weights "
                                       "('default': the shipped model); --arch and model.* sizes are then unused")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-minutes", type=float, help="stop after this much wall time (summed over --resume sittings)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (0: in-process)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output", help="run folder (bundles, metrics, plots)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.safetensors")
    parser.add_argument("--export", help="copy the best bundle here at the end (a .safetensors path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    parser.set_defaults(handler=run)


def overrides_from(args: argparse.Namespace) -> list[str]:
    """``--set`` values, then the shortcut flags as ``key=value`` (shortcuts win)."""
    overrides = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    if args.no_progress:
        overrides.append("run.progress=false")
    return overrides


def run(args: argparse.Namespace) -> int:
    from training.loop.trainer import Trainer

    if args.export and not args.export.endswith(".safetensors"):
        raise BundleError(f"--export {args.export}: bundle files end in .safetensors")
    config = load_config(args.config, overrides_from(args))
    result = Trainer(config, command=["tessera", *sys.argv[1:]] if sys.argv[0].endswith("tessera") else None).fit(
        resume=args.resume
    )
    summary = {
        "output": str(result.output),
        "best": str(result.best),
        "last": str(result.last),
        "stopped": result.stopped,
        "epochs": len(result.history),
        "seconds": round(result.seconds, 1),
        "best_metrics": result.best_metrics,
    }
    if args.export:
        export = Path(args.export)
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.best, export)
        summary["exported"] = str(export)
    print(json.dumps(summary, indent=2))
    return 0
