"""The GPU path, checked on the machine it runs on: prints ONE JSON line.

    .venv/bin/python bench/gpu.py              # CUDA when present (8192² image), else the CPU (1024²)
    .venv/bin/python bench/gpu.py --size 4096  # another image size

Keys (the same on every device; ``"device"`` says which one ran):

* ``cuda_available``, ``device``, ``gpu``: what ran; ``autocast_dtype``: the dtype inference
  autocasts to there (``float32``: none, the CPU's default);
* ``autocast_tiled_vs_whole``: tiled vs one whole pass of the shipped model with the device's
  default autocast: max |probability difference| and the share of equal labels (bf16/fp16 round
  each tile's activations differently from the whole pass, so only float32 is exact);
* ``float32_tiled_vs_whole``: the same in float32 (target max diff <= 1e-5, labels equal);
* ``oom_backoff``: a batch that cannot fit is started, the runner halves it until it fits:
  requested and final batch size, and whether the error was the device's real allocation
  failure (on CUDA: smp Unet-resnet34 on a huge tile batch) or a forced one (on the CPU a real
  allocation of an impossible size, so the host's memory is never exhausted);
* ``throughput``: per model (shipped U-Net, smp Unet-resnet34 random weights), seconds for the
  tiled run and one whole pass on the ``size``² image and their ratio ``tiled_vs_whole``
  (whole seconds / tiled seconds; > 1: tiles are faster); a whole pass that does not fit is
  reported as ``null``;
* ``gpu_memory_peak_mb``: the CUDA allocator's peak over the throughput runs (null on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.tiling import isbi_mosaic  # noqa: E402  one mosaic for every benchmark
from training.bundle import DEFAULT_BUNDLE, Bundle, load_bundle, new_bundle_info  # noqa: E402
from training.device import BatchRunner, autocast_dtype, is_out_of_memory, resolve_device  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402
from training.models import build_model  # noqa: E402
from training.normalization import Normalization  # noqa: E402

ISBI = ROOT / "training" / "assets" / "isbi2012" / "image"
SMP_RESNET34 = {"arch": "smp", "name": "Unet", "encoder": "resnet34", "in_channels": 1, "num_classes": 2}
#: Image edge for the exactness checks (a few tiles of the shipped model, quick everywhere).
CHECK_SIZE = 1000


def smp_bundle() -> Bundle:
    """smp Unet-resnet34 with random weights (nothing downloads)."""
    torch.manual_seed(0)
    model = build_model(SMP_RESNET34).eval()
    return Bundle(model=model, info=new_bundle_info(SMP_RESNET34, model, ["a", "b"], Normalization()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiled_vs_whole(predictor: Predictor, image: np.ndarray) -> dict:
    """Max |probability difference| and share of equal labels, tiled against one whole pass."""
    tiled = predictor.predict(image, probabilities=True)
    whole = predictor.predict_whole(image)
    diff = float(np.abs(tiled.probabilities - whole.probabilities).max())
    return {"max_abs_diff": diff, "labels_equal": float((tiled.labels == whole.labels).mean())}


def exactness(device: torch.device, image: np.ndarray) -> dict:
    """Tiled vs whole with the device's default precision (autocast on CUDA), then in float32."""
    default = tiled_vs_whole(Predictor(DEFAULT_BUNDLE, device=device), image)
    float32 = tiled_vs_whole(Predictor(DEFAULT_BUNDLE, device=device, precision="float32"), image)
    return {"autocast_tiled_vs_whole": default, "float32_tiled_vs_whole": float32}


def oom_backoff(device: torch.device) -> dict:
    """Start a batch that cannot fit and let :class:`BatchRunner` halve it until it does."""
    requested = 64
    if device.type == "cuda":
        model = smp_bundle().model.to(device).eval()

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(batch.to(device)).float().mean(dim=(1, 2, 3)).cpu()

        batch = torch.zeros(requested, 1, 2048, 2048)
        mode = "real"
    else:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            # n > 1 items ask the allocator for (n - 1) * 4 TiB: a real allocation failure.
            torch.empty((batch.shape[0] - 1) * 2**42, dtype=torch.uint8)
            return batch.mean(dim=(1, 2, 3))

        batch = torch.zeros(requested, 1, 8, 8)
        mode = "forced"
    runner = BatchRunner(forward, requested)
    try:
        out = runner(batch)
        ok = out.shape[0] == requested
    except RuntimeError as error:
        ok = False
        mode += f" (failed: {is_out_of_memory(error)})"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"requested": requested, "final_batch": runner.size, "all_items": ok, "mode": mode}


def timed(function) -> float | None:
    """Seconds of one call (None when it runs out of memory)."""
    try:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def throughput(name: str, bundle: Bundle, device: torch.device, image: np.ndarray) -> dict:
    """Tiled and whole-pass seconds on ``image`` (after a warm-up on a small crop)."""
    predictor = Predictor(bundle, device=device)
    predictor.predict(image[:1024, :1024])
    synchronize(device)
    tiled = timed(lambda: (predictor.predict(image), synchronize(device)))
    whole = timed(lambda: (predictor.predict_whole(image, probabilities=False), synchronize(device)))
    return {
        "model": name,
        "tile": predictor.tile,
        "batch_size": predictor.batch_size,
        "tiled_s": tiled,
        "whole_s": whole,
        "tiled_vs_whole": (whole / tiled) if tiled and whole else None,
        "megapixels_per_s_tiled": image.size / 1e6 / tiled if tiled else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=None, help="image edge for throughput (default 8192 on CUDA, 1024 on the CPU)")
    args = parser.parse_args()
    device = resolve_device("auto")
    size = args.size or (8192 if device.type == "cuda" else 1024)
    dtype = autocast_dtype(device)
    line: dict = {
        "device": device.type,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "autocast_dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        "size": size,
    }
    line.update(exactness(device, isbi_mosaic(CHECK_SIZE)))
    line["oom_backoff"] = oom_backoff(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    image = isbi_mosaic(size)
    line["throughput"] = [
        throughput("shipped-unet", load_bundle(DEFAULT_BUNDLE), device, image),
        throughput("smp-unet-resnet34", smp_bundle(), device, image),
    ]
    line["gpu_memory_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps(line))


if __name__ == "__main__":
    main()
