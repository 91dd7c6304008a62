"""Tiler benchmark: prints ONE JSON line of ratios measured in one run (the machine is shared and
noisy: compare ratios, not seconds).

    .venv/bin/python bench/tiling.py            # everything (several minutes on 2 CPU cores)
    .venv/bin/python bench/tiling.py --quick    # smaller images, no 32768² RSS run

Keys:
* ``tiler_efficiency``: raw model time on pre-built tile batches / end-to-end tiled time (lazy
  TIFF in, mirroring, normalising, batching, model, zarr out) for the same tiles. Target >= 0.90.
* ``tiled_vs_whole``: whole-image pass time / tiled time on a 2048² image (the shipped model if
  present, else a valid U-Net width 16 depth 4) at the bundle's tile size, and
  ``tiled_vs_whole_auto_tile`` with ``--tile auto`` (the size it fits to this image:
  ``auto_tile_for_image``). Target >= 1.0 on a CPU.
* ``tile_auto``: the size ``--tile auto`` chose, its measured throughput over the worst and the
  best candidate.
* ``--only monai``: smp Unet-resnet34 with TRAINED weights (``smp_weights``; trained briefly on ISBI
  slices 0-24 on first use and cached, :data:`SMP_CACHE`), its halo scanned on mosaics of those
  slices (``smp_halo_scan``, :mod:`training.inference.halo`), on a 2048² image against MONAI's
  ``sliding_window_inference`` (roi 512, gaussian, reflect, sw_batch_size 4). Agreement is the share
  of labels equal to the whole-image pass (for MONAI: of Tessera's default halo; for each Tessera
  setting: of its own halo, i.e. the same mirror padding). ``smp_pareto``: seconds and agreement of
  MONAI at overlap 0.25 and 0.5 and of Tessera's default, its ``exact`` halo preset and hand-picked
  tiles and halos. ``vs_monai_same_agreement``: MONAI-0.25 seconds over those of the fastest Tessera
  setting agreeing at least as well (target >= 1.5); ``vs_monai`` / ``agreement_tessera``: the same
  for Tessera's default (target >= 1.0 at >= 0.999); ``vs_monai_exact`` / ``agreement_tessera_exact``:
  the ``exact`` preset (>= 0.9999); ``tiled_vs_whole_smp``: whole pass over the default's tiled time.
* ``rss_growth``: peak RSS of a 32768² (--quick: 16384²) zarr->zarr run over a 4096² run, minus 1.
* ``gflops``: achieved GFLOP/s of the smp whole pass and of the tiled run over a measured fp32
  matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from training.bundle import DEFAULT_BUNDLE, Bundle, load_bundle, new_bundle_info, save_bundle  # noqa: E402
from training.data.dataset import ISBI_TRAIN  # noqa: E402
from training.inference.halo import measure_bundle_halo, with_halo  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402
from training.inference.tilefit import fit_tile  # noqa: E402
from training.io.images import read_image  # noqa: E402
from training.io.readers import open_image  # noqa: E402
from training.io.writers import label_dtype, open_sink  # noqa: E402
from training.models import build_model  # noqa: E402
from training.normalization import Normalization  # noqa: E402

ISBI = ROOT / "training" / "assets" / "isbi2012" / "image"
#: A valid U-Net of the shipped model's size (width 16, depth 4).
BENCH_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 4, "width": 16, "padding": "valid"}
#: The smallest network for memory runs: RSS is then dominated by the tiler, not the model.
RSS_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 1, "width": 2, "padding": "valid"}
#: Tile input for the memory runs (valid for RSS_UNET: step 508).
RSS_TILE = 524
#: Chunk edge of the generated zarr inputs.
RSS_CHUNK = 1024
SMP_RESNET34 = {"arch": "smp", "name": "Unet", "encoder": "resnet34", "in_channels": 1, "num_classes": 2}
#: Interleaved timed runs of the raw model and the end-to-end tiler (the fastest of each counts).
EFFICIENCY_ROUNDS = 3


def isbi_mosaic(size: int) -> np.ndarray:
    """A ``size x size`` uint8 image made of ISBI slices (real texture, reproducible)."""
    slices = [read_image(ISBI / f"{i}.png") for i in range(30)]
    tiles = -(-size // 512)
    rows = [np.concatenate([slices[(r * tiles + c) % 30] for c in range(tiles)], 1) for r in range(tiles)]
    return np.ascontiguousarray(np.concatenate(rows, 0)[:size, :size])


def random_bundle(spec: dict, seed: int = 0, probe: np.ndarray | None = None) -> Bundle:
    """A random-weight bundle; with ``probe`` the head bias is centred so both classes occur."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    bundle = Bundle(model=model, info=new_bundle_info(spec, model, ["a", "b"], Normalization()))
    if probe is not None:
        probs = Predictor(bundle, device="cpu").predict_whole(probe).probabilities
        head = model.head if hasattr(model, "head") else model.segmentation_head[0]
        with torch.no_grad():
            head.bias[1] -= float(np.median(np.log(probs[1] + 1e-12) - np.log(probs[0] + 1e-12)))
    return bundle


#: Where the briefly trained smp Unet-resnet34 is kept between bench runs (never in the repository:
#: 98 MB). Delete it to train again.
SMP_CACHE = Path.home() / ".cache" / "tessera" / "bench-smp-unet-resnet34-isbi.safetensors"
#: Training of the bench's smp model: crops of this size, this many per step, at most this many
#: steps or seconds (whichever ends first), ISBI 2012 training slices 0-24.
SMP_TRAIN_CROP, SMP_TRAIN_BATCH, SMP_TRAIN_STEPS, SMP_TRAIN_SECONDS = 192, 4, 1500, 900


def trained_smp_bundle(cache: Path = SMP_CACHE) -> tuple[Bundle, dict]:
    """smp Unet-resnet34 trained briefly on ISBI slices (cross-entropy, Adam with cosine decay,
    random crops and flips; encoder_weights=None, nothing downloads), cached at ``cache``. Returns the bundle and
    how it was trained (steps, seconds, whether it came from the cache)."""
    if cache.is_file():
        bundle = load_bundle(cache)
        return bundle, {**bundle.info.provenance.get("bench_training", {}), "cached": True}
    labels_dir = ISBI.parent / "label"
    images = [read_image(ISBI / f"{i}.png") for i in ISBI_TRAIN]
    targets = [(read_image(labels_dir / f"{i}.png") > 127).astype(np.int64) for i in ISBI_TRAIN]
    inputs = [Normalization.apply(image, *Normalization().statistics(image))[0] for image in images]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(SMP_RESNET34).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    started, steps, crop = time.perf_counter(), 0, SMP_TRAIN_CROP
    while (progress := max(steps / SMP_TRAIN_STEPS, (time.perf_counter() - started) / SMP_TRAIN_SECONDS)) < 1:
        for group in optimiser.param_groups:  # cosine decay over the step or time budget
            group["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * progress))
        xs, ys = [], []
        for _ in range(SMP_TRAIN_BATCH):
            k, y, x = rng.integers(len(inputs)), *rng.integers(0, 512 - crop, 2)
            patch, target = inputs[k][y : y + crop, x : x + crop], targets[k][y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                patch, target = patch[:, ::-1], target[:, ::-1]
            if rng.random() < 0.5:
                patch, target = patch[::-1], target[::-1]
            xs.append(patch.copy())
            ys.append(target.copy())
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.stack(xs))[:, None]), torch.from_numpy(np.stack(ys)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    model.eval()
    training = {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "crop": crop,
                "batch": SMP_TRAIN_BATCH, "final_loss": round(float(loss.detach()), 4)}
    info = new_bundle_info(SMP_RESNET34, model, ["membrane", "cell"], Normalization(), provenance={"bench_training": training})
    save_bundle(cache, model, info)
    return load_bundle(cache), {**training, "cached": False}


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------- memory (child processes)
def write_zarr_input(path: Path, size: int) -> None:
    """A ``size²`` uint8 zarr v3 image written in row bands (bounded memory, cheap: one repeated
    textured band)."""

    band = isbi_mosaic(RSS_CHUNK)
    array = zarr.create_array(store=str(path), shape=(size, size), chunks=(RSS_CHUNK, RSS_CHUNK), dtype=np.uint8, fill_value=0)
    row = np.tile(band, (1, -(-size // RSS_CHUNK)))[:, :size]
    for y in range(0, size, RSS_CHUNK):
        array[y : y + RSS_CHUNK] = row[: min(RSS_CHUNK, size - y)]


def rss_child(source: str, output: str) -> dict:
    """Run in a fresh process: stream ``source`` (zarr) into a zarr label sink; report peak RSS."""

    torch.set_num_threads(1)
    predictor = Predictor(random_bundle(RSS_UNET), device="cpu", tile=RSS_TILE, batch_size=2)
    image = open_image(source, max_pixels=None)
    grid = predictor.grid(*image.shape[:2])
    started = time.perf_counter()
    with open_sink(output, image.shape[:2], label_dtype(2), (grid.step_h, grid.step_w)) as sink:
        predictor.predict_to(image, labels=sink)
    return {
        "size": image.shape[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
        "tiles": len(grid),
    }


def peak_rss(size: int, folder: Path) -> dict:
    """Peak RSS (MiB) of a fresh process segmenting a generated ``size²`` zarr image."""
    source, output = folder / f"in{size}.zarr", folder / f"out{size}.zarr"
    if not source.exists():
        write_zarr_input(source, size)
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(source), str(output)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_growth(sizes: list[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tessera-rss-") as folder:
        runs = [peak_rss(size, Path(folder)) for size in sizes]
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1
    return {"rss_growth": round(growth, 4), "rss_runs": runs}


# ---------------------------------------------------------------------- throughput
def tiler_efficiency(bundle: Bundle, image: np.ndarray, folder: Path) -> dict:
    """End-to-end (lazy TIFF -> zarr) versus the model alone on the same tile batches: the fastest
    of :data:`EFFICIENCY_ROUNDS` interleaved runs of each (single runs varied 0.87-0.97 here)."""


    predictor = Predictor(bundle, device="cpu")
    path = folder / "input.tif"
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib")
    source = open_image(path)
    grid = predictor.grid(*image.shape[:2])
    stats = predictor.statistics(source)

    def end_to_end() -> None:
        with open_sink(folder / "labels.zarr", image.shape[:2], label_dtype(2), (grid.step_h, grid.step_w)) as sink:
            predictor.predict_to(source, labels=sink, stats=stats)

    tiles, size = list(grid.tiles()), predictor.batch_size
    batches = [torch.from_numpy(predictor._windows(image, tiles[i : i + size], stats)) for i in range(0, len(tiles), size)]

    def raw() -> None:
        for batch in batches:
            predictor._runner(batch)

    raw()  # warm-up
    rounds = [(timed(raw)[0], timed(end_to_end)[0]) for _ in range(EFFICIENCY_ROUNDS)]  # interleaved
    raw_seconds, tiled_seconds = min(r for r, _ in rounds), min(t for _, t in rounds)
    return {"tiler_efficiency": round(raw_seconds / tiled_seconds, 3), "tiles": len(tiles), "tile": predictor.tile}


def tiled_vs_whole(bundle: Bundle, image: np.ndarray, auto_tile: int | None) -> dict:
    """Whole-image pass time over tiled time, at the bundle's tile and at the ``--tile auto`` one."""
    predictor = Predictor(bundle, device="cpu")
    predictor.predict(image[:600, :600])  # warm-up
    whole_seconds, whole = timed(predictor.predict_whole, image, probabilities=False)
    tiled_seconds, tiled = timed(predictor.predict, image)
    result = {
        "tiled_vs_whole": round(whole_seconds / tiled_seconds, 3),
        "tiled_mpix_s": round(image.size / tiled_seconds / 1e6, 3),
        "whole_mpix_s": round(image.size / whole_seconds / 1e6, 3),
        "tiled_equals_whole": bool(np.array_equal(tiled.labels, whole.labels)),
    }
    if auto_tile:  # --tile auto as a user gets it: the measured rates, the size fitted to this image
        tuned = Predictor(bundle, device="cpu", tile="auto")
        tuned_seconds, tuned_result = timed(tuned.predict, image)
        result["tiled_vs_whole_auto_tile"] = round(whole_seconds / tuned_seconds, 3)
        result["auto_tile_for_image"] = tuned.tile_for(*image.shape[:2])
        result["auto_tile_equals_whole"] = bool(np.array_equal(tuned_result.labels, whole.labels))
    return result


def tile_auto(bundle: Bundle) -> dict:
    predictor = Predictor(bundle, device="cpu", tile="auto")
    rates = predictor.tile_choice.throughput
    chosen = rates[predictor.tile]
    return {
        "tile_auto": predictor.tile,
        "tile_auto_over_worst": round(chosen / min(rates.values()), 3),
        "tile_auto_over_best": round(chosen / max(rates.values()), 3),
        "tile_auto_mpix_s": {str(k): round(v / 1e6, 3) for k, v in rates.items()},
    }


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(timed(torch.mm, a, b)[0] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def model_gflop(model: torch.nn.Module, size: int) -> float:
    """GFLOP of one forward pass of a ``size²`` 1-channel input (PyTorch's flop counter)."""

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() / 1e9


def monai_labels(model: torch.nn.Module, pixels: torch.Tensor, overlap: float) -> np.ndarray:
    """MONAI's ``sliding_window_inference`` (roi 512, sw_batch_size 4, gaussian, reflect) labels."""
    from monai.inferers import sliding_window_inference  # noqa: PLC0415  the bench extra (MONAI), only for --only monai

    with torch.inference_mode():
        logits = sliding_window_inference(
            pixels, roi_size=(512, 512), sw_batch_size=4, predictor=model, overlap=overlap,
            mode="gaussian", padding_mode="reflect",
        )
    return logits[0].argmax(0).numpy().astype(np.uint8)


class WholePasses:
    """Whole-image reference labels of ``image`` per halo (the mirror padding follows the halo, so
    each tiled setting is compared with the whole pass of the same predictor), computed once each."""

    def __init__(self, bundle: Bundle, image: np.ndarray) -> None:
        self.bundle, self.image, self.labels, self.seconds = bundle, image, {}, {}

    def __call__(self, halo: int) -> np.ndarray:
        if halo not in self.labels:
            # a fixed tile: the whole pass does not depend on it, and no tile rates get measured
            predictor = Predictor(with_halo(self.bundle, halo), device="cpu", batch_size=2, tile=512)
            self.seconds[halo], whole = timed(predictor.predict_whole, self.image, probabilities=False)
            self.labels[halo] = whole.labels
        return self.labels[halo]


def tessera_point(name: str, predictor: Predictor, image: np.ndarray, whole: WholePasses) -> dict:
    """One Tessera point of the speed/agreement curve: seconds, agreement, tile and halo."""
    seconds, result = timed(predictor.predict, image)
    halo = predictor.geometry.halo
    tile = predictor.tile_for(*image.shape[:2])
    agreement = float((result.labels == whole(halo)).mean())
    return {"name": name, "tile": tile, "halo": halo, "tiles": len(predictor.grid(*image.shape[:2])),
            "seconds": round(seconds, 3), "agreement": round(agreement, 6)}


def held_out_accuracy(bundle: Bundle) -> float:
    """Pixel accuracy of the bench's smp model on ISBI slice 29 (not trained on), whole pass."""
    image = read_image(ISBI / "29.png")
    target = (read_image(ISBI.parent / "label" / "29.png") > 127).astype(np.uint8)
    return float((Predictor(bundle, device="cpu").predict_whole(image, probabilities=False).labels == target).mean())


def vs_monai(image: np.ndarray, peak: float) -> dict:
    """Trained smp Unet-resnet34 on ``image``: MONAI's sliding window against Tessera's default,
    its exact preset and a few hand-picked tiles and halos (one speed/agreement curve)."""
    trained, training = trained_smp_bundle()
    scan_seconds, bundle = timed(measure_bundle_halo, trained, [read_image(ISBI / f"{i}.png") for i in range(25)])
    measure_seconds, default = timed(Predictor, bundle, device="cpu", batch_size=2)  # measures the tile rates
    mean, std = default.statistics(image)
    pixels = torch.from_numpy(Normalization.apply(image, mean, std))[None]
    model = default.model
    whole = WholePasses(bundle, image)
    reference = whole(default.geometry.halo)
    monai = {}
    for overlap in (0.25, 0.5):
        seconds, labels = timed(monai_labels, model, pixels, overlap)
        monai[overlap] = {"name": f"monai-{overlap}", "seconds": round(seconds, 3),
                          "agreement": round(float((labels == reference).mean()), 6)}
    exact = Predictor(bundle, device="cpu", batch_size=2, halo="exact")
    points = [tessera_point("tessera-default", default, image, whole), tessera_point("tessera-exact", exact, image, whole)]
    halo, stride = default.geometry.halo, default.geometry.stride
    # hand-picked: the default's halo at the candidate tiles, one stride less, and tiles whose grid
    # fits 2048² exactly (core 512 or 1024 px) with small halos
    picks = [(512, halo), (768, halo), (1024, halo), (768, max(stride, halo - stride)), (1024, exact.geometry.halo),
             (512 + 2 * stride, stride), (1024 + 2 * stride, stride), (512 + 4 * stride, 2 * stride),
             (1024 + 4 * stride, 2 * stride)]
    for tile, pick in dict.fromkeys(picks):
        with warnings.catch_warnings():  # an override warns with the measured agreement: known here
            warnings.simplefilter("ignore")
            predictor = Predictor(bundle, device="cpu", batch_size=2, tile=tile, halo=pick)
        points.append(tessera_point(f"tessera-{tile}-halo{pick}", predictor, image, whole))
    fit = fit_tile(default.geometry, dict(default.tile_rates), *image.shape[:2])
    base = monai[0.25]
    good = [p for p in points if p["agreement"] >= base["agreement"]]
    fastest = min(good, key=lambda p: p["seconds"]) if good else None
    scan = bundle.info.halo
    return {
        "smp_weights": "trained",
        "smp_training": training,
        "smp_held_out_pixel_accuracy": round(held_out_accuracy(bundle), 4),
        "smp_halo_scan": {"seconds": round(scan_seconds, 1), "impulse": scan["impulse"], "tiles": scan["tiles"],
                          "agreement": scan["agreement"], "presets": scan["presets"]},
        "smp_tile_measure_seconds": round(measure_seconds, 2),
        "smp_tile_rates_mpix_s": {str(size): round(rate / 1e6, 3) for size, rate in default.tile_rates},
        "smp_tile_fit_predicted_s": {str(size): round(sec, 2) for size, sec in fit.seconds.items()},
        "smp_pareto": [monai[0.25], monai[0.5], *points],
        "vs_monai_same_agreement": round(base["seconds"] / fastest["seconds"], 3) if fastest else None,
        "vs_monai_same_agreement_setting": fastest["name"] if fastest else None,
        "vs_monai": round(base["seconds"] / points[0]["seconds"], 3),
        "agreement_tessera": points[0]["agreement"],
        "agreement_monai": base["agreement"],
        "vs_monai_exact": round(base["seconds"] / points[1]["seconds"], 3),
        "agreement_tessera_exact": points[1]["agreement"],
        "tiled_vs_whole_smp": round(whole.seconds[halo] / points[0]["seconds"], 3),
        "monai_vs_whole": round(base["seconds"] / whole.seconds[halo], 3),
        "smp_halo": halo,
        "smp_tile": points[0]["tile"],
        "gflops_ratio_whole": round(model_gflop(model, 64) / 64**2 * image.size / whole.seconds[halo] / peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (no 32768² memory run)")
    parser.add_argument("--rss-child", nargs=2, metavar=("SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated parts: efficiency,whole,auto,monai,rss")
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(rss_child(*args.rss_child)))
        return
    parts = set((args.only or "efficiency,whole,auto,monai,rss").split(","))
    image = isbi_mosaic(2048)
    shipped = load_bundle(DEFAULT_BUNDLE) if DEFAULT_BUNDLE.exists() else random_bundle(BENCH_UNET, probe=image[:512, :512])
    result: dict = {"model": "shipped" if DEFAULT_BUNDLE.exists() else "unet-w16-d4-random", "threads": torch.get_num_threads()}
    peak = matmul_peak_gflops()
    result["matmul_peak_gflops"] = round(peak, 1)
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as folder:
        if "efficiency" in parts:
            result.update(tiler_efficiency(shipped, image, Path(folder)))
    if "auto" in parts:
        result.update(tile_auto(shipped))
    if "whole" in parts:
        result.update(tiled_vs_whole(shipped, image, result.get("tile_auto")))
    if "monai" in parts:
        result.update(vs_monai(image[:1024, :1024] if args.quick else image, peak))
    if "rss" in parts:
        result.update(rss_growth([4096, 16384] if args.quick else [4096, 16384, 32768]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
