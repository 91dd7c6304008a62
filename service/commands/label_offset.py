"""``tessera label-offset``: measure how far masks sit off the structures they trace, as JSON.

Flips and 90-degree turns assume labels centred on what they trace; some data sets draw them a
fraction of a pixel off (ISBI 2012: 0.6 px above the membranes), and a model trained on plainly
flipped copies then misses the labels along every edge. This command finds the offset -- the
peak of the cross-correlation of image intensity with one class's masks, refined to sub-pixel
precision (:func:`training.data.label_offset.measure_label_offset`) -- and prints the line to put in a
training config, ``data.label_offset: [dy, dx]`` (pixels; negative: up / left).
"""

from __future__ import annotations

import argparse
import json

from service.commands.labelled import add_dataset_options, labelled_folder
from training.data.dataset import ISBI_TRAIN, DatasetError
from training.errors import OptionError

EXAMPLES = """\
examples:
  tessera label-offset                                 the shipped ISBI 2012 training slices 0-24
  tessera label-offset --images data/img --masks data/mask --class membrane
  tessera label-offset --images data/img --masks data/mask --select 0-9
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label-offset",
        help="measure how far masks sit off what they trace (JSON)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_options(parser, "the shipped ISBI 2012 training slices 0-24")
    parser.add_argument("--class", dest="class_name",
                        help="the class whose masks are compared with the images (default: the rarest class, "
                             "usually the thin structures the offset matters for)")
    parser.add_argument("--per-image", action="store_true", help="include each image's own offset")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from training.data.label_offset import measure_label_offset

    folder = labelled_folder(args, ISBI_TRAIN)
    examples = folder.load_all()
    if not examples:
        raise DatasetError("no images selected")
    classes = list(folder.labels.classes)
    if args.class_name is not None and args.class_name not in classes:
        raise OptionError(f"--class {args.class_name!r} is not one of the classes: {', '.join(classes)}")
    if args.class_name is None:
        counts = sum(np.bincount(e.target[e.target >= 0].ravel(), minlength=len(classes)) for e in examples)
        index = int(np.argmin(counts))
    else:
        index = classes.index(args.class_name)
    offset, each = measure_label_offset([(e.image, e.target == index) for e in examples])
    result = {"label_offset": list(offset), "class": classes[index], "images": len(examples),
              "config": f"data.label_offset: [{offset[0]}, {offset[1]}]"}
    if args.per_image:
        result["per_image"] = {e.name: (list(o) if o else None) for e, o in zip(examples, each)}
    print(json.dumps(result, indent=2))
    return 0
