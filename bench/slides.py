"""Benchmark: a whole-slide image with tissue skipping against computing every tile. ONE JSON line.

    .venv/bin/python bench/slides.py [--size 50000] [--small 10000] [--tissue-share 0.3] [--bundle PATH | --bundle tiny]
    .venv/bin/python bench/slides.py --size 50000 --batch-only     # tessera batch in-process vs local:2 only

The slide is synthetic and written here: an Aperio-style SVS (JPEG tiles of 512 px, levels
downsampled 4x, a stripped thumbnail page) of ``--size``² pixels at 0.5 µm, white glass with about
``--tissue-share`` of its area covered by ellipses of tissue whose texture is the ISBI 2012 slices
coloured like H&E. Every tile is generated from its coordinates, so writing a 50k² slide needs no
more memory than a tile row.

Runs, each a child process (its own peak RSS), all ``tessera predict``:

* ``auto``: ``--tissue auto`` (the background class of the shipped model is ``cell``, what glass is);
* ``none``: ``--tissue none``;
* ``small``: ``--tissue auto`` on a ``--small``² slide of the same make (RSS comparison).

The line reports: ``auto_speedup`` (time none / time auto; target >= 0.8 / tissue share),
``target_speedup``, ``labels_equal_on_tissue_tiles`` (every computed tile's labels equal the
``none`` run's), ``peak_rss_mb`` of each run and ``rss_auto_over_small`` (target <= 1.1),
``tissue_seconds_share`` (tissue detection over the whole ``auto`` run; target <= 0.02) and, when
``--batch`` is given, ``batch_local2_identical`` (a ``tessera batch --scheduler local:2`` run's
labels byte-identical to the in-process one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.cli import main as tessera_main
from training.bundle import new_bundle_info, save_bundle
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.inference.slide import prepare_slide
from training.io.images import read_image
from training.models import build_model
from training.normalization import Normalization

ISBI_IMAGES = REPO / "training" / "assets" / "isbi2012" / "image"
#: Tile edge of the written slide, pixels.
SLIDE_TILE = 512
#: Level-0 micrometres per pixel of the synthetic slide.
MPP = 0.5
#: Tissue ellipses: centre (y, x) and radii (ry, rx) as fractions of the slide's side.
ELLIPSES = ((0.30, 0.30, 0.20, 0.16), (0.62, 0.66, 0.22, 0.18), (0.78, 0.25, 0.10, 0.12), (0.22, 0.74, 0.09, 0.10))


# ------------------------------------------------------------------------------------ the slide
def ellipse_share(scale: float) -> float:
    """Area share of the ellipses scaled by ``scale`` (they do not overlap)."""
    return sum(np.pi * ry * rx * scale**2 for _, _, ry, rx in ELLIPSES)


class SyntheticSlide:
    """Pixels of the synthetic slide, generated for any box of any level (downsample ``step``)."""

    def __init__(self, size: int, share: float) -> None:
        self.size = size
        self.scale = float(np.sqrt(share / ellipse_share(1.0)))
        slices = [read_image(p) for p in sorted(ISBI_IMAGES.glob("*.png"), key=lambda p: int(p.stem))]
        self.texture = np.stack(slices)  # (30, 512, 512) uint8
        rng = np.random.default_rng(0)
        self.noise = rng.integers(0, 6, (512, 512, 3), dtype=np.uint8)

    def tissue(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Boolean mask of level-0 coordinates ``ys`` (column) x ``xs`` (row) inside an ellipse."""
        inside = np.zeros((ys.size, xs.size), bool)
        for cy, cx, ry, rx in ELLIPSES:
            dy = (ys[:, None] / self.size - cy) / (ry * self.scale)
            dx = (xs[None, :] / self.size - cx) / (rx * self.scale)
            inside |= dy**2 + dx**2 < 1
        return inside

    def box(self, y0: int, y1: int, x0: int, x1: int, step: int) -> np.ndarray:
        """RGB uint8 of level pixels ``[y0, y1) x [x0, x1)`` of the level with downsample ``step``."""
        ys = np.arange(y0, y1) * step
        xs = np.arange(x0, x1) * step
        image = (242 - self.noise[np.ix_(ys % 512, xs % 512)]).astype(np.uint8)
        inside = self.tissue(ys, xs)
        if inside.any():
            which = ((ys[:, None] // 512) * 7 + (xs[None, :] // 512)) % len(self.texture)
            gray = self.texture[which, ys[:, None] % 512, xs[None, :] % 512].astype(np.float32)
            dark = 255 - gray
            stain = np.stack([235 - 0.3 * dark, 165 - 0.6 * dark, 210 - 0.4 * dark], axis=-1).clip(0, 255).astype(np.uint8)
            image[inside] = stain[inside]
        return image

    def tiles(self, height: int, width: int, step: int):
        for y in range(0, height, SLIDE_TILE):
            for x in range(0, width, SLIDE_TILE):
                yield self.box(y, min(y + SLIDE_TILE, height), x, min(x + SLIDE_TILE, width), step)

    def write(self, path: Path) -> Path:
        """An Aperio SVS of levels with downsample 1, 4, 16 (while over 512 px), JPEG tiles."""
        head = f"Aperio Image Library v12.0.15\r\n{self.size}x{self.size} [0,0 {self.size}x{self.size}] ({SLIDE_TILE}x{SLIDE_TILE}) JPEG/RGB Q=85"
        tags = f"|AppMag = 20|MPP = {MPP}"
        steps = [4**i for i in range(4) if self.size // 4**i >= 512] or [1]
        with tifffile.TiffWriter(path, bigtiff=self.size > 20000) as writer:
            for index, step in enumerate(steps):
                n = self.size // step
                writer.write(self.tiles(n, n, step), shape=(n, n, 3), dtype=np.uint8, tile=(SLIDE_TILE, SLIDE_TILE),
                             compression="jpeg", compressionargs={"level": 85}, photometric="rgb", metadata=None,
                             description=(head if index == 0 else f"{head} -> {n}x{n}") + tags)
                if index == 0:
                    side = max(self.size // 64, 1)
                    writer.write(self.box(0, side, 0, side, self.size // side), compression="jpeg", rowsperstrip=16,
                                 metadata=None, photometric="rgb", description=f"{head} -> {side}x{side}")
        return path


# ------------------------------------------------------------------------------------ children
def child(argv: list[str]) -> dict:
    """Run ``tessera`` with ``argv`` in this process; its summary, seconds and peak RSS."""
    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tessera_main(argv)
    if code != 0:
        raise SystemExit(f"tessera {' '.join(argv)} failed with {code}")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
    return {"summary": json.loads(lines[-1]) if lines else None, "seconds": time.perf_counter() - start,
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "children_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def run_child(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tessera {' '.join(argv)}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tissue_tiles_equal(slide: Path, auto: Path, none: Path, bundle: str | None, background: str) -> bool:
    """Whether every tile the ``auto`` run computed has the labels of the ``none`` run."""
    predictor = Predictor(bundle, InferenceOptions(device="cpu"))
    job = prepare_slide(slide, predictor.info, background=background)
    try:
        grid = predictor.grid(*job.source.shape[:2])
        computed, _ = job.skip.split(grid.tiles())
    finally:
        job.close()
    a, b = zarr.open_group(str(auto), mode="r")["0"], zarr.open_group(str(none), mode="r")["0"]  # OME-Zarr label images
    return all(np.array_equal(a[y0:y1, x0:x1], b[y0:y1, x0:x1]) for y0, y1, x0, x1 in (t.output for t in computed))


def tiny_bundle(root: Path) -> str:
    """A depth-2, width-4 U-Net with a ``background`` class (quick runs)."""
    spec = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid"}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return str(save_bundle(root / "tiny.safetensors", model, new_bundle_info(spec, model, ["background", "cell"], Normalization())))


# ------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50000, help="side of the slide, pixels (default 50000)")
    parser.add_argument("--small", type=int, default=10000, help="side of the slide the peak RSS is compared with")
    parser.add_argument("--tissue-share", type=float, default=0.3)
    parser.add_argument("--bundle", default=None, help="bundle path, or 'tiny' (default: the shipped model)")
    parser.add_argument("--background-class", default="cell", help="class of skipped tiles (shipped model: cell)")
    parser.add_argument("--batch", action="store_true", help="also compare tessera batch --scheduler local:2 with in-process")
    parser.add_argument("--batch-only", action="store_true", help="only the batch comparison (on the --size slide)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="tessera-bench-slides-") as tmp:
        root = Path(tmp)
        bundle = tiny_bundle(root) if args.bundle == "tiny" else args.bundle or "default"
        if args.batch_only:
            big = SyntheticSlide(args.size, args.tissue_share).write(root / "big.svs")
            started = time.perf_counter()
            identical = batch_identical(root, bundle, big, args.background_class)
            print(json.dumps({"bench": "slides", "size": args.size, "batch_local2_identical": identical,
                              "batch_seconds": round(time.perf_counter() - started, 1)}))
            return
        started = time.perf_counter()
        big = SyntheticSlide(args.size, args.tissue_share).write(root / "big.svs")
        small = SyntheticSlide(args.small, args.tissue_share).write(root / "small.svs")
        write_seconds = time.perf_counter() - started
        common = ["--quiet", "--device", "cpu", "--background-class", args.background_class]
        runs = {
            "auto": run_child(["predict", bundle, str(big), "-o", str(root / "auto.zarr"), *common]),
            "none": run_child(["predict", bundle, str(big), "-o", str(root / "none.zarr"), "--tissue", "none", *common]),
            "small": run_child(["predict", bundle, str(small), "-o", str(root / "small.zarr"), *common]),
        }
        equal = tissue_tiles_equal(big, root / "auto.zarr", root / "none.zarr",
                                   None if bundle == "default" else bundle, args.background_class)
        batch = batch_identical(root, bundle, big, args.background_class) if args.batch else None
    auto, none = runs["auto"], runs["none"]
    share = auto["summary"]["slide"]["tissue"]["share"]
    line = {
        "bench": "slides",
        "bundle": "tiny" if args.bundle == "tiny" else Path(args.bundle or "default.safetensors").name,
        "size": args.size,
        "small": args.small,
        "tissue_share": round(share, 4),
        "skipped_share": auto["summary"]["skipped_share"],
        "auto_speedup": round(none["seconds"] / auto["seconds"], 3),
        "target_speedup": round(0.8 / max(share, 1e-6), 3),
        "labels_equal_on_tissue_tiles": equal,
        "rss_auto_over_small": round(auto["rss_mb"] / runs["small"]["rss_mb"], 3),
        "tissue_seconds_share": round(auto["summary"]["tissue_seconds"] / auto["seconds"], 4),
        "batch_local2_identical": batch,
        "seconds": {name: round(run["seconds"], 2) for name, run in runs.items()} | {"write_slides": round(write_seconds, 2)},
        "peak_rss_mb": {name: run["rss_mb"] for name, run in runs.items()},
        "tiles": auto["summary"]["tiles"],
    }
    print(json.dumps(line))


def batch_identical(root: Path, bundle: str, slide: Path, background: str = "cell") -> bool | None:
    """``tessera batch`` on the slide in-process and on ``local:2``: identical label bytes (None: not run)."""
    outputs = {}
    for scheduler in ("in-process", "local:2"):
        out = root / f"batch-{scheduler.replace(':', '')}"
        run_child(["batch", bundle, str(slide), str(out), "--scheduler", scheduler, "--device", "cpu", "--quiet",
                   "--background-class", background])
        stores = sorted(out.glob("*.zarr"))
        outputs[scheduler] = zarr.open_array(str(stores[0] / "0"), mode="r")
    a, b = outputs["in-process"], outputs["local:2"]
    return a.shape == b.shape and all(np.array_equal(a[y:y + 4096], b[y:y + 4096]) for y in range(0, a.shape[0], 4096))


if __name__ == "__main__":
    main()
