"""Jobs for huge images against a real server (the shipped model, whose tiles take seconds here):
progress, cancel, the bounded queue, a restart in the middle of a job, and retention.

One server with ``TESSERA_MAX_JOBS=1`` runs a 4-tile job that is watched, met with a 429, then
cancelled; a one-tile job completes; then the server is killed while a third job runs and a new
server on the same results folder must report that job failed and still serve the completed one.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tifffile

from service.http.jobstore import JobRecord, JobSettings, JobStatus, JobStore
from tests.support.paths import ISBI_SLICE, ROOT
from tests.support.server import free_port, stop_process_group, wait_ready
from training.inference.predictor import Predictor
from training.io.images import read_image

pytestmark = pytest.mark.slow


def big_tiff(tmp: Path) -> Path:
    """1024 x 1024 (4 tiles of the shipped model): ISBI slice 25 mirrored into each quadrant."""
    slice_ = read_image(ISBI_SLICE)
    pixels = np.block([[slice_, slice_[:, ::-1]], [slice_[::-1], slice_[::-1, ::-1]]])
    path = tmp / "big.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="zlib")
    return path


@contextlib.contextmanager
def server(home: Path, results: Path, **env: str):
    port = free_port()
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
                   "TESSERA_RESULTS_DIR": str(results), **env}
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT, env=environment,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, home / "server.log")
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, process
    finally:
        stop_process_group(process)
        log.close()


def crash(process: subprocess.Popen) -> None:
    """SIGKILL the server and its workers (BentoML starts each worker in a session of its own)."""
    tree = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)


def submit(client: httpx.Client, path: Path) -> dict:
    response = client.post("/jobs", files={"image": (path.name, path.read_bytes(), "image/tiff")})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, done, seconds: float = 240) -> dict:
    deadline = time.monotonic() + seconds
    while not done(status := client.get(f"/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_progress_queue_cancel_restart(tmp_path: Path) -> None:
    home, results = tmp_path / "home", tmp_path / "results"
    home.mkdir()
    big = big_tiff(tmp_path)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, read_image(ISBI_SLICE))
    with server(home, results, TESSERA_MAX_JOBS="1") as (client, process):
        job = submit(client, big)
        assert job["status"] == "pending" and job["stage"] == "queued" and job["upload_bytes"] == big.stat().st_size
        seen = wait_for(client, job["job_id"], lambda s: s["tiles_done"] >= 2)
        assert seen["status"] == "in_progress" and seen["stage"] == "segmenting"
        assert seen["tiles_total"] == 4 and seen["size"] == [1024, 1024] and seen["progress"] == seen["tiles_done"] / 4
        assert seen["pixels_per_second"] > 0 and seen["eta_seconds"] > 0 and seen["started_at"] >= seen["created_at"]

        refused = client.post("/jobs", files={"image": ("small.tif", small.read_bytes(), "image/tiff")})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and "TESSERA_MAX_JOBS" in refused.json()["detail"]

        assert client.post(f"/jobs/{job['job_id']}/cancel").status_code == 200
        cancelled = wait_for(client, job["job_id"], lambda s: s["status"] not in ("pending", "in_progress"))
        assert cancelled["status"] == "cancelled" and cancelled["tiles_done"] < 4
        assert sorted(p.name for p in (results / job["job_id"]).iterdir()) == ["job.json"]  # partial output removed
        assert client.get(f"/jobs/{job['job_id']}/result").status_code == 409

        done = submit(client, small)  # the queue has room again
        finished = wait_for(client, done["job_id"], lambda s: s["status"] == "completed")
        assert finished["stage"] == "done" and finished["tiles_done"] == finished["tiles_total"] == 1
        labels = client.get(finished["result_url"])
        assert labels.status_code == 200 and labels.headers["content-type"] == "image/tiff"
        np.testing.assert_array_equal(tifffile.imread(io.BytesIO(labels.content)), Predictor(device="cpu").predict(read_image(ISBI_SLICE)).labels)

        running = submit(client, big)
        wait_for(client, running["job_id"], lambda s: s["status"] == "in_progress")
        crash(process)
    with server(home, results) as (client, _process):
        failed = client.get(f"/jobs/{running['job_id']}").json()
        assert failed["status"] == "failed" and failed["error"]["error"] == "server_restarted"
        assert sorted(p.name for p in (results / running["job_id"]).iterdir()) == ["job.json"]
        kept = client.get(finished["result_url"])
        assert kept.status_code == 200 and kept.content == labels.content
        assert client.delete(f"/jobs/{done['job_id']}").status_code == 204
        assert client.get(f"/jobs/{done['job_id']}").status_code == 404
        assert not (results / done["job_id"]).exists()


def test_finished_jobs_expire_after_retention(tmp_path: Path) -> None:
    store = JobStore(JobSettings(tmp_path, retention_s=60))
    old, recent = store.new("tiff"), store.new("tiff")
    for record, age in ((old, 61), (recent, 59)):
        store.finish(record, JobStatus.completed)
        record.finished_at = time.time() - age
        store.save(record)
    with pytest.raises(KeyError):
        store.load(old.job_id)
    assert store.load(recent.job_id).status == "completed"
    store.sweep()
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.job_id]


def test_recover_fails_only_jobs_of_dead_processes(tmp_path: Path) -> None:
    store = JobStore(JobSettings(tmp_path))
    mine = store.new("tiff")  # owned by this (living) process
    orphan = store.new("zarr")
    orphan.owner = [orphan.owner[0], orphan.owner[1] - 1000.0]  # same pid, another start: a past process
    orphan.status = JobStatus.in_progress.value
    store.save(orphan)
    (tmp_path / orphan.job_id / "upload.tif").write_bytes(b"partial")
    assert store.recover() == [orphan.job_id]
    assert store.load(mine.job_id).status == "pending"
    record = store.load(orphan.job_id)
    assert isinstance(record, JobRecord) and record.status == "failed" and record.error["status"] == 503
    assert not (tmp_path / orphan.job_id / "upload.tif").exists()
