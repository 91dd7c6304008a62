"""ONNX Runtime vs eager PyTorch through the same tiler: prints ONE JSON line.

    .venv/bin/python bench/export.py             # shipped model and smp Unet-resnet34, 2048² image
    .venv/bin/python bench/export.py --size 1024 # a smaller image

For each model the bundle is exported to ONNX (:mod:`training.export.onnx`), then the same
2048² image (a mosaic of ISBI slices) is segmented by ``Predictor(bundle)`` (eager PyTorch) and by
``Predictor("model.onnx")`` (ONNX Runtime, CPU provider) with the same tile, batch size and
threads, in interleaved rounds (the fastest round of each counts). Keys per model:
``ratio`` = ONNX Runtime output megapixels per second / eager's (> 1: ONNX Runtime faster),
both throughputs, the tile, and ``labels_equal`` (share of pixels with equal labels). The smp
Unet-resnet34 has random weights (nothing is downloaded); ``threads`` gives PyTorch's intra-op
threads and ONNX Runtime's intra-/inter-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from tiling import SMP_RESNET34, isbi_mosaic, random_bundle  # noqa: E402  (bench/tiling.py)

from training.bundle import DEFAULT_BUNDLE, Bundle, load_bundle  # noqa: E402
from training.export.onnx import export_onnx  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402

#: Interleaved timed rounds per runtime (the fastest counts: the machine is shared).
ROUNDS = 2


def compare(bundle: Bundle, image: np.ndarray, folder: Path, name: str) -> dict:
    """Eager and ONNX Runtime tiled throughput of ``bundle`` on ``image``, same tile and batch."""
    path = export_onnx(bundle, folder / f"{name}.onnx")
    eager = Predictor(bundle, device="cpu")
    onnx = Predictor(path, device="cpu", tile=eager.tile, batch_size=eager.batch_size)
    warm = image[: eager.grid(*image.shape).step_h, : eager.grid(*image.shape).step_w]
    eager.predict(warm), onnx.predict(warm)
    seconds: dict[str, float] = {}
    labels: dict[str, np.ndarray] = {}
    for _ in range(ROUNDS):  # interleaved, so both see the same machine load
        for key, predictor in (("eager", eager), ("onnxruntime", onnx)):
            start = time.perf_counter()
            labels[key] = predictor.predict(image).labels
            seconds[key] = min(seconds.get(key, float("inf")), time.perf_counter() - start)
    megapixels = image.size / 1e6
    return {
        "tile": eager.tile,
        "batch": eager.batch_size,
        "eager_mpx_per_s": round(megapixels / seconds["eager"], 3),
        "onnxruntime_mpx_per_s": round(megapixels / seconds["onnxruntime"], 3),
        "ratio": round(seconds["eager"] / seconds["onnxruntime"], 3),
        "labels_equal": round(float((labels["eager"] == labels["onnxruntime"]).mean()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = isbi_mosaic(args.size)
    models = {
        "shipped": load_bundle(DEFAULT_BUNDLE),
        "smp_unet_resnet34_random_weights": random_bundle(SMP_RESNET34, probe=image[:512, :512]),
    }
    result = {"image": f"{args.size}x{args.size}",
              "threads": {"torch_intra_op": torch.get_num_threads(), "onnxruntime_intra_op": torch.get_num_threads(),
                          "onnxruntime_inter_op": 1},
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory() as folder:
        for name, bundle in models.items():
            result[name] = compare(bundle, image, Path(folder), name)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
