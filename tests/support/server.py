"""A real ``tessera serve`` process for the HTTP tests and the load benchmark, and a free
loopback port.

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

from tests.support.paths import ROOT

#: Seconds a server may take to load its model and answer /readyz (2 shared, busy cores).
STARTUP_SECONDS = 180
#: Upload limit the test server runs with (small, so the over-limit test sends little).
TEST_MAX_UPLOAD_BYTES = 4 * 2**20
#: The test server's bundle's decision threshold (class 1 where p1 >= it): every service test
#: runs through a bundle's calibrated threshold, not the argmax (its probabilities sit within
#: 0.49-0.51).
SMALL_THRESHOLD = 0.4975


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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
    """Poll ``/readyz`` until it answers 200; raise with the log's tail if the server exits or
    :data:`STARTUP_SECONDS` pass."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


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
