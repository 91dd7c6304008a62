"""Server memory during huge-image jobs: one real server on loopback, a job per size, RSS sampled.

For each size N, an N x N tiled TIFF (ISBI slices repeated) is submitted to ``POST /jobs``, polled
and its result streamed to a file; the server's RSS (its whole process tree) is sampled every
0.2 s from the upload to the end of the download. Prints one JSON line per size: the idle RSS
(after a warm-up request), the RSS just before the job, the peak over both, the job's seconds and pixels per second, and
whether the result equals ``tessera predict`` on the same file byte for byte (for sizes up to
``--reference-max``: the reference costs as long again).

The limits are raised by their environment variables (``TESSERA_MAX_UPLOAD_BYTES``,
``TESSERA_MAX_PIXELS``). The default model is a tiny U-Net (the tests' bundle factory): memory
does not depend on the model's speed, and the shipped model would take hours for 20480² here.

    .venv/bin/python bench/jobs_memory.py                               # 10240 and 20480
    .venv/bin/python bench/jobs_memory.py --sizes 4096 --bundle default
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli import main as tessera  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.images import isbi_slice  # noqa: E402
from tests.support.server import serve  # noqa: E402
from training.bundle import bundle_path  # noqa: E402


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Sampler:
    """The peak of :func:`tree_rss` over a period, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()


def write_tiff(path: Path, size: int) -> None:
    """A size x size uint8 tiled TIFF of ISBI slices (size a multiple of 256), written tile by tile."""
    if size % 256:
        raise ValueError(f"size {size} is not a multiple of 256")
    band = np.tile(isbi_slice(25), (1, size // 512 + 1))[:, :size]

    def tiles():
        for y in range(0, size, 256):
            rows = band[y % 512 : y % 512 + 256]
            for x in range(0, size, 256):
                yield rows[:, x : x + 256]

    tifffile.imwrite(path, data=tiles(), shape=(size, size), dtype=np.uint8, tile=(256, 256), compression="zlib", bigtiff=True)


def server_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            return connection.pid
    raise RuntimeError(f"no process listens on {port}")


def run_job(url: str, image: Path, out: Path) -> dict:
    with httpx.Client(base_url=url, timeout=3600) as client:
        with image.open("rb") as file:
            job = client.post("/jobs", files={"image": (image.name, file, "image/tiff")}).json()
        while (job := client.get(f"/jobs/{job['job_id']}").json())["status"] in ("pending", "in_progress"):
            time.sleep(1)
        with client.stream("GET", f"/jobs/{job['job_id']}/result") as result, out.open("wb") as target:
            result.raise_for_status()
            for chunk in result.iter_bytes(2**20):
                target.write(chunk)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10240, 20480])
    parser.add_argument("--bundle", default=None, help="bundle (default: a tiny U-Net made here)")
    parser.add_argument("--reference-max", type=int, default=10240, help="compare with tessera predict up to this size")
    parser.add_argument("--env", action="append", default=[], help="extra server environment, NAME=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-jobs-bench-") as tmp:
        work = Path(tmp)
        bundle = bundle_path(args.bundle) if args.bundle else make_bundle(
            path=work / "tiny.safetensors", classes=["background", "foreground"], batchnorm_statistics=False,
            probe=isbi_slice(25), threshold=0.4975).path
        largest = max(args.sizes) ** 2
        env = {"TESSERA_MAX_UPLOAD_BYTES": str(4 * largest + 2**30), "TESSERA_MAX_PIXELS": str(largest),
               **dict(item.split("=", 1) for item in args.env)}
        (work / "home").mkdir()
        with serve(bundle, work / "home", env) as url:
            pid = server_pid(url)
            httpx.post(f"{url}/segment", content=(Path(__file__).parents[1] / "training/assets/isbi2012/image/25.png").read_bytes(),
                       headers={"content-type": "image/png"}, timeout=600)
            idle = tree_rss(pid)
            for size in args.sizes:
                image = work / f"{size}.tif"
                write_tiff(image, size)
                result = work / f"{size}-job.tif"
                before = tree_rss(pid)
                started = time.perf_counter()
                with Sampler(pid) as sampler:
                    job = run_job(url, image, result)
                seconds = time.perf_counter() - started
                equal = None
                if size <= args.reference_max:
                    reference = work / f"{size}-predict.tif"
                    with contextlib.redirect_stdout(io.StringIO()):  # its summary line is not ours to print
                        assert tessera(["predict", str(bundle), str(image), "-o", str(reference), "--device", "cpu", "--quiet"]) == 0
                    equal = reference.read_bytes() == result.read_bytes()
                    reference.unlink()
                print(json.dumps({
                    "bench": "job_memory", "size": size, "upload_mb": round(image.stat().st_size / 2**20, 1),
                    "status": job["status"], "tiles": job["tiles_total"], "seconds": round(seconds, 1),
                    "pixels_per_second": round(job["pixels_per_second"] or 0), "idle_rss_mb": round(idle / 2**20, 1),
                    "rss_before_mb": round(before / 2**20, 1), "peak_rss_mb": round(sampler.peak / 2**20, 1),
                    "growth_mb": round((sampler.peak - idle) / 2**20, 1), "growth_over_before_mb": round((sampler.peak - before) / 2**20, 1),
                    "malloc_arena_max": env.get("MALLOC_ARENA_MAX"),
                    "equal_to_tessera_predict": equal,
                }), flush=True)
                image.unlink()
                result.unlink()


if __name__ == "__main__":
    main()
