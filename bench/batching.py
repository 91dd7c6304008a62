"""Does batching tiles pay on this device? One forward pass of N tiles against N passes of one tile,
for the shipped model at its tile size, interleaved so load changes hit both alike. Prints ONE
JSON line:

* ``device``, ``threads``, ``tile`` (input edge), ``rounds``;
* ``single_s_per_tile``: median seconds per tile of one-tile passes;
* ``batched_s_per_tile``: ``{N: median seconds per tile of an N-tile pass}``;
* ``batched_vs_single``: ``{N: single / batched seconds per tile}`` (> 1: batching is faster);
* ``max_abs_diff``: ``{N: largest |p_batched - p_single|}`` over the probabilities (0 would mean
  batching leaves the bytes of the result unchanged).

    .venv/bin/python bench/batching.py                  # N = 2, 4; 3 rounds; CPU
    .venv/bin/python bench/batching.py --sizes 2 4 8 --rounds 5 --threads 1
    .venv/bin/python bench/batching.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.bundle import DEFAULT_BUNDLE  # noqa: E402
from training.device import set_cpu_threads  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402


def seconds(function, *args) -> float:
    """Wall time of ``function(*args)``, waiting for the device to finish."""
    start = time.perf_counter()
    function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(predictor: Predictor, sizes: list[int], rounds: int) -> dict:
    """Per-tile seconds of N-tile and one-tile passes (medians over rounds) and their difference."""
    tile = predictor.tile
    generator = torch.Generator().manual_seed(0)
    batches = {n: torch.randn(n, predictor.info.in_channels, tile, tile, generator=generator) for n in sizes}
    single: list[float] = []
    batched: dict[int, list[float]] = {n: [] for n in sizes}
    diff: dict[int, float] = {}
    predictor._forward(batches[sizes[0]][:1])  # warm-up: kernels and allocator pools
    for _ in range(rounds):
        for n, batch in batches.items():
            batched[n].append(seconds(predictor._forward, batch) / n)
            single.append(sum(seconds(predictor._forward, batch[i : i + 1]) for i in range(n)) / n)
    for n, batch in batches.items():
        together = predictor._forward(batch)
        alone = torch.cat([predictor._forward(batch[i : i + 1]) for i in range(n)])
        diff[n] = float((together - alone).abs().max())
    per_tile = statistics.median(single)
    return {
        "single_s_per_tile": round(per_tile, 4),
        "batched_s_per_tile": {n: round(statistics.median(times), 4) for n, times in batched.items()},
        "batched_vs_single": {n: round(per_tile / statistics.median(times), 3) for n, times in batched.items()},
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (default: every core, as one server worker)")
    args = parser.parse_args()
    threads = set_cpu_threads(args.threads)
    predictor = Predictor(args.bundle, device=args.device, batch_size=max(args.sizes))
    result = measure(predictor, args.sizes, args.rounds)
    print(json.dumps({
        "bench": "tile_batching",
        "bundle": args.bundle.name,
        "device": str(predictor.device),
        "threads": threads,
        "tile": predictor.tile,
        "rounds": args.rounds,
        **result,
    }))


if __name__ == "__main__":
    main()
