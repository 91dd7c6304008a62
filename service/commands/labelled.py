"""Options shared by the sub-commands that read images with masks (evaluate, label-offset).

``--images DIR --masks DIR`` name a labelled folder (paired by stem, read as ``tessera train``
reads it), ``--select`` picks pairs from it as ``data.val`` does (stems, stem ranges, ``pos:``
positions; :mod:`training.data.selection`); with neither folder, the shipped ISBI 2012 slices
stand in (a default split per command).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training.data.dataset import SegmentationFolder, isbi2012
from training.errors import OptionError


def add_dataset_options(parser: argparse.ArgumentParser, default: str) -> None:
    """--images, --masks, --select; ``default`` says which ISBI slices stand in without folders."""
    parser.add_argument("--images", help=f"folder of images (default: {default})")
    parser.add_argument("--masks", help="folder of masks, paired by file stem")
    parser.add_argument("--select", help="stems, stem ranges or positions, e.g. '25-29', '7,img_3' or "
                                         "'pos:0-4', or a file listing stems (default: all)")


def labelled_folder(args: argparse.Namespace, isbi_default: Sequence[int]) -> SegmentationFolder:
    """The folder ``--images/--masks`` name (narrowed by ``--select``), or the shipped ISBI
    slices ``--select`` or ``isbi_default`` name."""
    if bool(args.images) != bool(args.masks):
        raise OptionError("give both --images and --masks (or neither, for the shipped ISBI 2012 slices)")
    if args.images:
        folder = SegmentationFolder(args.images, args.masks)
        return folder.select(args.select) if args.select else folder
    return isbi2012(args.select or isbi_default)
