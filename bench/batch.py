"""Benchmark: batch jobs against calling the predictor directly in a loop. Prints ONE JSON line.

    .venv/bin/python bench/batch.py [--images 64] [--size 16384] [--bundle PATH | --bundle tiny]

Two workloads, each measured in its own child process (so peak RSS is that run's own):

* a folder of ``--images`` ISBI 2012 slices (512x512, cycled): the in-process job (decoding,
  predicting, PNG encoding, atomic writes, hashing, manifest) and ``local:2`` (cluster start-up
  included) against a plain loop of ``read_image`` + ``Predictor.predict``;
* one ``--size``² tiled TIFF (ISBI slices tiled): the gigapixel job (OME-Zarr, pyramid) in-process
  and on ``local:2`` against ``Predictor.predict_to`` into a zarr array (what ``tessera
  predict`` does).

Ratios are throughput of the job over throughput of the direct loop (target for in-process:
>= 0.90). ``rss_mb`` is the child's peak RSS; for ``local:2`` the largest worker's is added as
``worker_rss_mb``. The model is the shipped default unless ``--bundle`` says otherwise
(``tiny``: a depth-2 width-4 U-Net, for quick runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
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

from service.batch import segment_folder, segment_gigapixel  # noqa: E402
from training.bundle import DEFAULT_BUNDLE, new_bundle_info, save_bundle  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402
from training.io.images import read_image  # noqa: E402
from training.io.readers import fit_channels, open_image  # noqa: E402
from training.io.writers import label_dtype  # noqa: E402
from training.models import build_model  # noqa: E402
from training.normalization import Normalization  # noqa: E402

ISBI_IMAGES = REPO / "training" / "assets" / "isbi2012" / "image"
#: Tile edge of the written gigapixel TIFF.
TIFF_TILE = 512


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ data
def make_data(root: Path, images: int, size: int, bundle: str) -> str:
    """The folder, the big TIFF and (for ``tiny``) a bundle, under ``root``; the bundle path."""
    slices = [read_image(p) for p in sorted(ISBI_IMAGES.glob("*.png"), key=lambda p: int(p.stem))]
    folder = root / "folder"
    folder.mkdir()
    for i in range(images):
        shutil.copyfile(ISBI_IMAGES / f"{i % len(slices)}.png", folder / f"{i:03d}.png")

    def tiles():
        for y in range(0, size, TIFF_TILE):
            for x in range(0, size, TIFF_TILE):
                yield slices[(y // TIFF_TILE + x // TIFF_TILE) % len(slices)][: min(TIFF_TILE, size - y), : min(TIFF_TILE, size - x)]

    tifffile.imwrite(root / "big.tif", tiles(), shape=(size, size), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), bigtiff=True)
    if bundle != "tiny":
        return bundle
    spec = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid"}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return str(save_bundle(root / "tiny.safetensors", model, new_bundle_info(spec, model, ["bg", "fg"], Normalization())))


# ------------------------------------------------------------------------------------ children
def child(mode: str, root: Path, bundle: str) -> dict:
    """One measurement in this (child) process. Modules are imported before the clock starts;
    the clock includes building the predictor (which the jobs do too)."""
    start = time.perf_counter()
    result: dict = {}
    if mode == "folder_direct":
        predictor = Predictor(bundle, device="cpu")
        for path in sorted((root / "folder").glob("*.png")):
            predictor.predict(read_image(path))
    elif mode.startswith("folder_"):
        report = segment_folder(bundle, root / "folder", root / f"out_{mode}", scheduler=_scheduler(mode), device="cpu")
        result["ok"] = report.ok
    elif mode == "gigapixel_direct":
        predictor = Predictor(bundle, device="cpu")
        source = fit_channels(open_image(root / "big.tif", max_pixels=None), predictor.info.in_channels)
        height, width = source.shape[:2]
        grid = predictor.grid(height, width)
        sink = zarr.create_array(str(root / "direct.zarr"), shape=(height, width), chunks=(grid.step_h, grid.step_w),
                                 dtype=label_dtype(predictor.num_classes), fill_value=0, zarr_format=3)
        predictor.predict_to(source, labels=sink)
    else:
        report = segment_gigapixel(bundle, root / "big.tif", root / f"out_{mode}", scheduler=_scheduler(mode), device="cpu")
        result["chunks"] = report.chunks
    result.update(seconds=time.perf_counter() - start, rss_mb=round(peak_rss_mb(), 1))
    if mode.endswith("local2"):
        result["worker_rss_mb"] = round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1)
    return result


def _scheduler(mode: str) -> str:
    return "local:2" if mode.endswith("local2") else "in-process"


def run_child(mode: str, root: Path, bundle: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--root", str(root), "--bundle", bundle],
        check=True, capture_output=True, text=True, cwd=REPO,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--bundle", default=None, help="bundle path, or 'tiny' (default: the shipped model)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args.bundle)))
        return
    with tempfile.TemporaryDirectory(prefix="tessera-bench-batch-") as tmp:
        root = Path(tmp)
        bundle = make_data(root, args.images, args.size, args.bundle or str(DEFAULT_BUNDLE))
        runs = {mode: run_child(mode, root, bundle) for mode in (
            "folder_direct", "folder_inprocess", "folder_local2",
            "gigapixel_direct", "gigapixel_inprocess", "gigapixel_local2",
        )}
    line = {
        "bench": "batch",
        "bundle": "tiny" if args.bundle == "tiny" else Path(bundle).name,
        "images": args.images,
        "size": args.size,
        "folder_inprocess_over_direct": round(runs["folder_direct"]["seconds"] / runs["folder_inprocess"]["seconds"], 3),
        "folder_local2_over_direct": round(runs["folder_direct"]["seconds"] / runs["folder_local2"]["seconds"], 3),
        "gigapixel_inprocess_over_direct": round(runs["gigapixel_direct"]["seconds"] / runs["gigapixel_inprocess"]["seconds"], 3),
        "gigapixel_local2_over_direct": round(runs["gigapixel_direct"]["seconds"] / runs["gigapixel_local2"]["seconds"], 3),
        "folder_direct_images_per_s": round(args.images / runs["folder_direct"]["seconds"], 2),
        "gigapixel_direct_mpix_per_s": round(args.size**2 / 1e6 / runs["gigapixel_direct"]["seconds"], 3),
        "seconds": {mode: round(run["seconds"], 2) for mode, run in runs.items()},
        "peak_rss_mb": {mode: run["rss_mb"] for mode, run in runs.items()},
        "worker_peak_rss_mb": {mode: run["worker_rss_mb"] for mode, run in runs.items() if "worker_rss_mb" in run},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
