"""Benchmark: the paper's weight map per object in its bounding box grown by 4 sigma, against the
whole-image computation, on ISBI 2012 slices. Prints ONE JSON line (times from this run only).

    .venv/bin/python bench/weightmap.py [--slices 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from training.data import isbi2012
from training.data.weightmap import (
    border_weights,
    border_weights_whole_image,
    class_balance_weights,
    object_instances,
    unet_weight_map,
)

REPEATS = 5


def best_ms(function, *args) -> float:
    """Fastest of REPEATS runs in milliseconds (the machine is shared: the minimum is the signal)."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=5, help="ISBI slices to time (default 5)")
    args = parser.parse_args()
    data = isbi2012()
    full, per_box, reference, objects = [], [], [], []
    for index in range(args.slices):
        target = data.load(index).target
        weights = class_balance_weights(target, 2)
        instances = object_instances(target, [1])
        objects.append(int(instances.max()))
        full.append(best_ms(unet_weight_map, target, weights))
        per_box.append(best_ms(border_weights, instances))
        start = time.perf_counter()
        expected = border_weights_whole_image(instances)
        reference.append(1000 * (time.perf_counter() - start))
        assert np.allclose(border_weights(instances), expected, atol=1e-4)
    print(json.dumps({
        "bench": "weightmap",
        "slices": args.slices,
        "objects_per_slice": round(float(np.mean(objects)), 1),
        "weight_map_ms_per_512x512_slice": round(float(np.median(full)), 1),
        "border_term_per_bbox_ms": round(float(np.median(per_box)), 1),
        "border_term_whole_image_ms": round(float(np.median(reference)), 1),
        "speedup_per_bbox_over_whole_image": round(float(np.median(reference) / np.median(per_box)), 1),
    }))


if __name__ == "__main__":
    main()
