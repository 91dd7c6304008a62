"""``tessera predict`` on a whole-slide image: resolution, tissue, skipped tiles, objects.

The slide is read lazily at the chosen resolution (``--level``, ``--mpp``, else the bundle's
``data.mpp``, else level 0); with ``--tissue auto`` (default) or a mask, tiles without tissue are
not computed and get the background class. The labels go to the output as for any image, with the
slide's resolution in its attributes; a ``.zarr`` output is an OME-Zarr label image (pyramid,
axes in micrometres) as a gigapixel job writes it; the tissue mask is written beside it
(``<output>.tissue.png``); ``--objects`` streams the objects into a GeoJSON file for QuPath. The
JSON summary adds the resolution, the tissue share and the share of tiles skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from service.commands.inference import print_summary, progress_bar
from training.errors import OptionError
from training.inference.predictor import Predictor
from training.inference.slide import TISSUE_MODES, SlideJob
from training.io.geojson import OBJECT_TYPES

#: Rows and columns of the label map read at a time when objects are traced.
OBJECT_CHUNK = 2048


def add_slide_options(parser: argparse.ArgumentParser, objects: bool = True) -> None:
    """--mpp, --level, --tissue, --background-class and (``objects``) --objects, --object-type (slides only)."""
    group = parser.add_argument_group("whole-slide images (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF, OME-TIFF)")
    group.add_argument("--mpp", type=float, default=None, help="segment at this many micrometres per pixel (default: the bundle's data.mpp, else level 0)")
    group.add_argument("--level", type=int, default=None, help="segment this stored pyramid level")
    group.add_argument("--tissue", default="auto", metavar="auto|none|MASK.png",
                       help="auto: skip tiles without tissue (default); none: compute every tile; a PNG mask of any resolution")
    group.add_argument("--background-class", default=None, metavar="NAME|INDEX",
                       help="class of skipped tiles (default: the model's class named 'background')")
    if objects:
        group.add_argument("--objects", metavar="GEOJSON", help="also write the objects of every other class as QuPath GeoJSON")
        group.add_argument("--object-type", choices=OBJECT_TYPES, default="annotation", help="QuPath object type (default annotation)")


def check_slide_options(args: argparse.Namespace, image: str | None = None) -> None:
    """Refuse slide options on an image that is not a slide, with one line."""
    given = [name for name in ("mpp", "level", "objects", "background_class") if getattr(args, name, None) is not None]
    if given or getattr(args, "tissue", "auto") != "auto":
        names = ", ".join(f"--{n.replace('_', '-')}" for n in given) or "--tissue"
        raise OptionError(f"{names}: for whole-slide images only; {image or args.input} is not one")


def slide_settings(args: argparse.Namespace) -> dict:
    """The slide options as :func:`training.inference.slide.prepare_slide` takes them (used for slides only)."""
    tissue = args.tissue if args.tissue in TISSUE_MODES else str(Path(args.tissue))
    return {"mpp": args.mpp, "level": args.level, "tissue": tissue, "background": args.background_class}


def mask_path(output: str | Path) -> Path:
    """Where the tissue mask goes: beside the output, ``<name>.tissue.png``."""
    output = Path(output)
    return output.with_name(f"{output.name.split('.')[0]}.tissue.png")


def open_job(args: argparse.Namespace, info) -> SlideJob:
    """The slide of ``args.input`` prepared for a model with bundle info ``info``."""
    from training.inference.slide import prepare_slide

    return prepare_slide(args.input, info, **slide_settings(args))


def read_labels(path: str | Path):
    """The written label map, read lazily (zarr, TIFF) or mapped (.npy), for tracing objects."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path, mmap_mode="r")
    from training.io.readers import open_image

    return open_image(path, max_pixels=None)


def write_objects(args: argparse.Namespace, job: SlideJob, classes: list[str]) -> int:
    """Trace the objects of every class but the background into ``args.objects``; the count."""
    from training.io.geojson import iter_features, write_geojson
    from training.io.overlay import PALETTE

    background = job.skip.background if job.skip is not None else 0
    names = {i: name for i, name in enumerate(classes) if i != background}
    colors = {i: PALETTE[i % len(PALETTE)] for i in names}
    features = iter_features(read_labels(args.output), names, (OBJECT_CHUNK, OBJECT_CHUNK), args.object_type, colors,
                             job.resolution.to_level0)
    return write_geojson(args.objects, features)


def skipped_tiles(job: SlideJob, grid) -> int:
    """How many tiles of ``grid`` the job's tissue skips."""
    if job.skip is None:
        return 0
    return len(job.skip.split(grid.tiles())[1])


def slide_summary(args: argparse.Namespace, job: SlideJob, grid, started: float) -> dict:
    """What the JSON summary adds for a slide: resolution, tissue, skipped tiles, mask and objects."""
    skipped = skipped_tiles(job, grid)
    return {
        **job.attributes(),
        "tiles_skipped": skipped,
        "skipped_share": round(skipped / max(len(grid), 1), 6),
        "tissue_mask": str(mask_path(args.output)) if job.tissue is not None else None,
        "tissue_seconds": job.extra.get("tissue_seconds"),
        "objects": args.objects,
    }


def segment_slide(args: argparse.Namespace, predictor, progress_bar) -> tuple[dict, object]:
    """Segment the slide into ``args.output`` (and probabilities); the summary's slide part and the grid."""
    from service.commands.predict import probability_path
    from training.inference.to_file import predict_to_file

    started = time.perf_counter()
    job = open_job(args, predictor.info)
    job.extra["tissue_seconds"] = round(time.perf_counter() - started, 3)
    with contextlib.closing(job):
        grid = predictor.grid(*job.source.shape[:2])
        skipped = skipped_tiles(job, grid)
        bar, callback = progress_bar(f"segmenting tiles ({skipped} of {len(grid)} skipped: no tissue)",
                                     not args.quiet and len(grid) > 1)
        probabilities = probability_path(args)
        with bar:
            predict_to_file(predictor, job.source, args.output, probabilities=probabilities,
                            probability_dtype=args.probability_dtype,
                            attributes={"source": str(args.input), **job.attributes()}, progress=callback,
                            stats=job.stats(predictor.info.normalization), skip=job.skip,
                            label_image=True, mpp=job.resolution.mpp)
        job.write_mask(mask_path(args.output))
        summary = slide_summary(args, job, grid, started)
        if args.objects:
            summary["object_count"] = write_objects(args, job, list(predictor.info.classes))
        summary["probabilities"] = str(probabilities) if probabilities else None
        return summary, grid


def run_slide(args: argparse.Namespace, bundle: str | None, options, started: float) -> int:
    """``tessera predict`` for a slide: segment, then print the JSON summary line."""
    if args.overlay:
        raise OptionError("--overlay is for small images; a slide's tissue mask is written beside the output")
    predictor = Predictor(bundle, options)
    shown = sys.stderr.isatty()
    part, grid = segment_slide(args, predictor, lambda label, enabled: progress_bar(label, enabled and shown))
    return print_summary(predictor, grid, started, output=str(args.output), size=[grid.height, grid.width], **part)
