"""Support for the HTTP service tests and the load benchmark: a small bundle whose mask is not
trivial, a free loopback port, and a real ``bentoml serve`` process.

The server runs as its own process group on 127.0.0.1 with ``CUDA_VISIBLE_DEVICES=""``, a
temporary ``BENTOML_HOME`` and the bundle in ``TESSERA_BUNDLE``; :func:`serve` waits for
``/readyz`` and always stops the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from training.bundle import new_bundle_info, save_bundle
from training.io.images import read_image
from training.models import build_model
from training.normalization import Normalization
from training.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
ISBI_SLICE = ROOT / "training" / "assets" / "isbi2012" / "image" / "25.png"
#: A classic U-Net small enough to answer a 512x512 request in well under a second here.
SMALL_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid"}
#: Seconds a server may take to load its model and answer /readyz (2 shared, busy cores).
STARTUP_SECONDS = 180


#: The small bundle's decision threshold (class 1 where p1 >= it): every service test runs through
#: a bundle's calibrated threshold, not the argmax (its probabilities sit within 0.49-0.51).
SMALL_THRESHOLD = 0.4975


def write_small_bundle(path: Path, seed: int = 0) -> Path:
    """A random small U-Net whose head bias is shifted so ISBI slice 25 gets both classes, with
    the decision threshold :data:`SMALL_THRESHOLD`.

    A random network puts every pixel in one class; a mask of one value would make equality tests
    weak, so the bias moves the class-1 logit by minus the median logit difference on the slice.
    """
    torch.manual_seed(seed)
    model = build_model(SMALL_UNET).eval()
    info = new_bundle_info(SMALL_UNET, model, ["background", "foreground"], Normalization())
    save_bundle(path, model, info)
    probabilities = Predictor(path, device="cpu").predict(read_image(ISBI_SLICE), probabilities=True).probabilities
    p1 = np.clip(probabilities[1].astype(np.float64), 1e-12, 1 - 1e-12)
    shift = float(np.median(np.log(p1) - np.log1p(-p1)))
    with torch.no_grad():
        model.head.bias[1] -= shift
    info.threshold = SMALL_THRESHOLD
    return save_bundle(path, model, info)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(bundle: Path, home: Path, extra_env: dict[str, str] | None = None, workers: int = 1) -> Iterator[str]:
    """Run ``tessera serve`` (``bentoml serve service.http.app:Tessera``) and yield its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "TESSERA_RESULTS_DIR": str(home / "results"),
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "service.cli", "serve", str(bundle), "--port", str(port), "--workers", str(workers)]
    log = open(home / "server.log", "wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, home / "server.log")
        yield url
    finally:
        stop_process_group(process)
        log.close()


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


#: Upload limit the test server runs with (small, so the over-limit test sends little).
TEST_MAX_UPLOAD_BYTES = 4 * 2**20


@pytest.fixture(scope="session")
def service_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small bundle the session's server serves."""
    return write_small_bundle(tmp_path_factory.mktemp("bundle") / "small.safetensors")


@pytest.fixture(scope="session")
def service_url(service_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real server for every service test module of the session."""
    home = tmp_path_factory.mktemp("bentoml-home")
    with serve(service_bundle, home, {"TESSERA_MAX_UPLOAD_BYTES": str(TEST_MAX_UPLOAD_BYTES)}) as url:
        yield url


def stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its workers; SIGKILL them
    if they are still running after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
