"""``tessera batch``: segment a folder of images, or one gigapixel image, resumably.

SRC decides the job:

* a folder, a glob pattern (quote it) or a listing (.txt, one path per line): every image gets a
  label map under DST with the same relative name (NAME.png), optionally an overlay
  (NAME.overlay.png) and probabilities (NAME.probabilities.tif); DST/manifest.jsonl records each
  input (status, error, timing, content hashes); failed inputs do not stop the others;
* one TIFF/BigTIFF or zarr image (any size; read lazily): DST/NAME.zarr, an OME-Zarr (zarr v3,
  NGFF 0.5) label image with a downsampled pyramid, optionally DST/NAME.tif (tiled BigTIFF);
* one whole-slide image (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF, OME-TIFF): the same, at the
  resolution --mpp/--level/the bundle's data.mpp choose, tiles without tissue skipped
  (--tissue), the mask as DST/NAME.tissue.png and the OME-Zarr in micrometres.

Rerun the same command after a crash or a kill: finished work is verified (hashes in the manifest,
done-markers per chunk) and skipped, the rest is done. Outputs appear only when complete. Output
names can never leave DST. Exit code: 0 all done, 1 some inputs failed (see the manifest), 2 bad
arguments. A JSON report is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from service.batch import IN_PROCESS, is_gigapixel_source, segment_folder, segment_gigapixel
from service.commands.inference import add_bundle_argument, add_inference_options, prepare, progress_bar
from service.commands.predict_slide import add_slide_options, check_slide_options, slide_settings
from training.errors import OptionError
from training.io.images import DEFAULT_MAX_PIXELS

EXAMPLES = """\
examples:
  tessera batch default scans/ masks/
        every image below scans/ -> masks/<same name>.png, masks/manifest.jsonl
  tessera batch model.safetensors 'scans/**/*.tif' masks/ --overlay --probabilities
        a glob (quoted); overlays and uint8 probabilities next to each mask
  tessera batch default scans/ masks-0.3/ --threshold 0.3
        two-class model: class 1 where its probability >= 0.3 (default: the bundle's threshold)
  tessera batch model.safetensors slide.tif out/ --tiff --scheduler local:2
        one huge image -> out/slide.zarr (OME-Zarr with pyramid) and out/slide.tif, 2 worker processes
  tessera batch model.safetensors slide.svs out/ --scheduler local:2 --mpp 0.5
        a whole slide at 0.5 µm per pixel, tiles without tissue skipped
  tessera batch groupnorm.safetensors slide.tif out/ --blend gaussian
        a model that cannot tile exactly (instance/group norm): overlapping tiles averaged
  tessera batch model.safetensors scans/ masks/ --scheduler tcp://10.0.0.5:8786
        on an existing Dask cluster (inputs and DST on a file system all workers see)
  (rerun any of these after an interruption: only unfinished work is redone)
"""

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="segment a folder of images or one gigapixel image (resumable, Dask)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bundle_argument(parser)
    parser.add_argument("src", help="a folder, a quoted glob, a listing .txt, or one TIFF/BigTIFF/zarr image")
    parser.add_argument("dst", help="output folder (created)")
    parser.add_argument("--scheduler", default=IN_PROCESS,
                        help="in-process (default), local:N (N worker processes), or tcp://host:port")
    parser.add_argument("--overlay", action="store_true", help="folder jobs: also write NAME.overlay.png")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write per-class probabilities, uint8 round(255 p)")
    parser.add_argument("--tiff", action="store_true", help="gigapixel jobs: also write the labels as a tiled BigTIFF")
    parser.add_argument("--chunk", type=int, default=None,
                        help="gigapixel jobs: chunk edge in pixels, rounded to whole tile steps (default about 1024)")
    add_inference_options(parser, None, f"refuse larger images (folder default {DEFAULT_MAX_PIXELS:,}; gigapixel default: none)")
    add_slide_options(parser, objects=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    bundle, options = prepare(args)
    common = {"scheduler": args.scheduler, "probabilities": args.probabilities, "options": options}
    shown = not args.quiet and sys.stderr.isatty()
    if is_gigapixel_source(args.src):
        if args.overlay:
            raise OptionError("--overlay is for folder jobs; open the OME-Zarr in a viewer instead")
        bar, update = progress_bar("tiles", shown)
        with bar:
            report = segment_gigapixel(bundle, args.src, args.dst, tiff=args.tiff, chunk=args.chunk,
                                       max_pixels=args.max_pixels, tile_progress=update, slide=slide_settings(args), **common)
    else:
        check_slide_options(args, args.src)
        if args.tiff or args.chunk:
            raise OptionError("--tiff and --chunk are for gigapixel jobs (SRC one TIFF/zarr image)")
        bar, update = progress_bar("images", shown)
        with bar:
            report = segment_folder(bundle, args.src, args.dst, overlay=args.overlay,
                                    max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=update, **common)
    print(json.dumps(report.to_dict()))
    print(summary(report), file=sys.stderr)
    return 0 if report.ok else 1


def summary(report) -> str:
    """One human line about the job."""
    if report.kind == "gigapixel":
        if report.complete_before:
            return f"{report.output}: already complete"
        return (f"{report.output}: {report.computed} chunk(s) computed, {report.resumed} resumed, "
                f"{report.levels} pyramid level(s), {report.seconds:.1f} s")
    text = (f"{report.total} input(s): {report.succeeded} segmented, {report.skipped} already done, "
            f"{report.failed} failed, {report.refused} refused in {report.seconds:.1f} s; manifest {report.manifest}")
    for failure in report.failures[:10]:
        text += f"\n  {failure['status']}: {failure['input']}: {failure['error']}"
    if len(report.failures) > 10:
        text += f"\n  ... and {len(report.failures) - 10} more (see the manifest)"
    return text
