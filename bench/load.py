"""Load on the HTTP service: N concurrent clients posting 512x512 ISBI slices to a real server on
loopback for a bounded time and request count. Prints ONE JSON line:

``errors``, ``requests``, ``p50_s`` / ``p95_s`` latency, ``throughput_rps``, ``in_process_rps`` (the
predictor on the same images in this process, before the server starts, same thread count),
``http_vs_in_process`` (target >= 0.85), ``rss_start_mb`` / ``rss_end_mb`` of the server's process
tree after warm-up and at the end, and ``rss_drift`` (target < 0.10).

    .venv/bin/python bench/load.py                       # shipped model, 8 clients, 60 s
    .venv/bin/python bench/load.py --bundle m.safetensors --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.paths import ISBI_SLICE  # noqa: E402
from tests.support.server import serve  # noqa: E402
from training.bundle import DEFAULT_BUNDLE  # noqa: E402
from training.device import set_cpu_threads  # noqa: E402
from training.io.images import read_image  # noqa: E402
from training.inference.predictor import Predictor  # noqa: E402

SLICES = [ISBI_SLICE.parent / f"{index}.png" for index in range(25, 30)]


def in_process_rps(bundle: Path, seconds: float) -> float:
    """Images per second of the in-process predictor on the slices, one after another."""
    set_cpu_threads(len(os.sched_getaffinity(0)))  # as the one server worker does
    predictor = Predictor(bundle, device="cpu")
    images = [read_image(path) for path in SLICES]
    for image in images:  # warm-up, as the server gets below
        predictor.predict(image)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 2:
        predictor.predict(images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - started)


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def server_pid(port: int) -> int:
    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            return connection.pid
    raise RuntimeError(f"no process listens on {port}")


def run_clients(url: str, clients: int, seconds: float, max_requests: int) -> tuple[list[float], int]:
    bodies = [path.read_bytes() for path in SLICES]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            turn = index
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) + errors[0] >= max_requests:
                        return
                started = time.perf_counter()
                response = http.post("/segment", content=bodies[turn % len(bodies)], headers={"content-type": "image/png"})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1
                turn += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=5000)
    args = parser.parse_args()

    reference = in_process_rps(args.bundle, min(args.seconds, 30.0))  # before the server: no contention
    with tempfile.TemporaryDirectory() as home, serve(args.bundle, Path(home)) as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(port)
        for path in SLICES:  # warm-up: allocator pools and kernels for this shape
            httpx.post(f"{url}/segment", content=path.read_bytes(), headers={"content-type": "image/png"}, timeout=600)
        rss_start = tree_rss(pid)
        started = time.perf_counter()
        latencies, errors = run_clients(url, args.clients, args.seconds, args.max_requests)
        wall = time.perf_counter() - started
        rss_end = tree_rss(pid)
    throughput = len(latencies) / wall
    print(json.dumps({
        "bench": "http_load",
        "bundle": args.bundle.name,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": errors,
        "p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "throughput_rps": round(throughput, 3),
        "in_process_rps": round(reference, 3),
        "http_vs_in_process": round(throughput / reference, 3),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_drift": round(rss_end / rss_start - 1, 4),
    }))


if __name__ == "__main__":
    main()
