"""Faults: the job SIGKILLed mid folder run and mid gigapixel run, then rerun, gives byte-identical
outputs and leaves no temporary file; a Dask worker process killed mid job does not change the
output; corrupt images are recorded and the rest succeed; names leaving DST are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.batch import segment_folder, segment_gigapixel
from service.batch.folder import FolderOptions, run_folder
from service.batch.gigapixel import run_gigapixel
from service.batch.gigapixel.state import DONE_FOLDER
from service.cli import main
from tests.support.batch import TILE, leftovers, make_folder, make_slide, tree_bytes
from tests.support.paths import ROOT
from training.io.writers import encode_png

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: Longest wait for a subprocess or a job to reach the point where the test kills it, seconds.
WAIT = 120
#: Gigapixel chunk edge: one tile step (52 px), so the slide below has many small chunks.
CHUNK = 52
SLIDE = (312, 364)  # 6 x 7 = 42 chunks
CHUNKS = 42
#: Images in the folder runs that get killed.
IMAGES = 24


def wait_for(condition, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended (code {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_cli(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "service.cli", "batch", *args, "--tile", str(TILE), "--threads", "1", "--quiet"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def manifest_lines(dst: Path) -> int:
    path = dst / "manifest.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def markers(dst: Path, name: str) -> int:
    folder = dst / f".{name}.zarr.partial" / DONE_FOLDER
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def test_sigkill_mid_folder_run_then_rerun_is_byte_identical(bundle: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "src", IMAGES, size=(80, 100))
    segment_folder(bundle, tmp_path / "src", tmp_path / "reference", tile=TILE)
    dst = tmp_path / "dst"
    job = start_cli(str(bundle), str(tmp_path / "src"), str(dst))
    wait_for(lambda: manifest_lines(dst) >= 2, "two images were done", job)
    job.send_signal(signal.SIGKILL)
    job.wait(WAIT)
    done_when_killed = manifest_lines(dst)
    assert 2 <= done_when_killed < IMAGES
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert report.ok and report.skipped >= done_when_killed - 1 and report.skipped + report.succeeded == IMAGES
    assert tree_bytes(dst) == tree_bytes(tmp_path / "reference")
    assert leftovers(dst) == []


def test_sigkill_mid_gigapixel_run_then_rerun_is_byte_identical(bundle: Path, tmp_path: Path) -> None:
    slide = tmp_path / "slide.tif"
    make_slide(slide, *SLIDE)
    segment_gigapixel(bundle, slide, tmp_path / "reference", tile=TILE, chunk=CHUNK, tiff=True)
    dst = tmp_path / "dst"
    job = start_cli(str(bundle), str(slide), str(dst), "--chunk", str(CHUNK), "--tiff")
    wait_for(lambda: markers(dst, "slide") >= 3, "three chunks were done", job)
    job.send_signal(signal.SIGKILL)
    job.wait(WAIT)
    assert not (dst / "slide.zarr").exists() and 3 <= markers(dst, "slide") < CHUNKS
    report = segment_gigapixel(bundle, slide, dst, tile=TILE, chunk=CHUNK, tiff=True)
    assert report.resumed >= 3 and report.resumed + report.computed == CHUNKS
    assert tree_bytes(dst) == tree_bytes(tmp_path / "reference")
    assert leftovers(dst) == []


def run_in_thread(function) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["report"] = function()
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def kill_one_worker(runner) -> None:
    pids = runner.client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)


def test_killing_a_dask_worker_mid_gigapixel_job_changes_nothing(bundle: Path, local2, tmp_path: Path) -> None:
    spec, predictor, runner = local2
    slide = tmp_path / "slide.tif"
    make_slide(slide, *SLIDE)
    segment_gigapixel(bundle, slide, tmp_path / "reference", tile=TILE, chunk=CHUNK)
    dst = tmp_path / "dst"
    thread, outcome = run_in_thread(lambda: run_gigapixel(slide, dst, spec, predictor, runner, chunk=CHUNK))
    wait_for(lambda: markers(dst, "slide") >= 3 or not thread.is_alive(), "three chunks were done")
    assert markers(dst, "slide") < CHUNKS, "the job finished before a worker could be killed"
    kill_one_worker(runner)
    thread.join(WAIT)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].computed == CHUNKS
    assert tree_bytes(dst) == tree_bytes(tmp_path / "reference")
    assert leftovers(dst) == []


def test_killing_a_dask_worker_mid_folder_job_changes_nothing(bundle: Path, local2, tmp_path: Path) -> None:
    spec, _, runner = local2
    make_folder(tmp_path / "src", IMAGES, size=(80, 100))
    segment_folder(bundle, tmp_path / "src", tmp_path / "reference", tile=TILE)
    dst = tmp_path / "dst"
    thread, outcome = run_in_thread(lambda: run_folder(str(tmp_path / "src"), dst, spec, runner, FolderOptions()))
    wait_for(lambda: manifest_lines(dst) >= 2 or not thread.is_alive(), "two images were done")
    assert manifest_lines(dst) < IMAGES, "the job finished before a worker could be killed"
    kill_one_worker(runner)
    thread.join(WAIT)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].ok and outcome["report"].succeeded == IMAGES
    assert tree_bytes(dst) == tree_bytes(tmp_path / "reference")
    assert leftovers(dst) == []


def test_corrupt_images_are_recorded_and_the_rest_succeed(bundle: Path, tmp_path: Path) -> None:
    images = make_folder(tmp_path / "src", 3)
    src = tmp_path / "src"
    (src / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (src / "empty.jpg").write_bytes(b"")
    truncated = (src / "img000.png").read_bytes()[:60]
    (src / "truncated.png").write_bytes(truncated)
    (src / "notatiff.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    report = segment_folder(bundle, src, tmp_path / "dst", tile=TILE)
    assert (report.succeeded, report.failed, report.ok) == (len(images), 4, False)
    records = {json.loads(line)["input"]: json.loads(line) for line in (tmp_path / "dst" / "manifest.jsonl").read_text().splitlines()}
    for name in ("garbage.png", "empty.jpg", "truncated.png", "notatiff.tif"):
        assert records[name]["status"] == "failed" and name in records[name]["error"], records[name]
        assert records[name]["reason"] in ("corrupt", "empty", "unsupported")
        assert not (tmp_path / "dst" / name.replace(".jpg", ".png").replace(".tif", ".png")).exists()
    assert all(records[name]["status"] == "ok" for name in images)


def test_names_leaving_dst_are_refused_from_the_cli(bundle: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    pixels = make_slide(tmp_path / "slide.tif", 60, 60)
    (tmp_path / "in" / "a.png").write_bytes(encode_png(pixels))
    victim = tmp_path / "x.png"  # where '../x.png' would land if DST/../x.png were written
    victim.write_bytes(b"precious")
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("a.png\n../x.png\n/etc/passwd\n")
    code = main(["batch", str(bundle), str(listing), str(tmp_path / "in" / "out"), "--tile", str(TILE), "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and (report["succeeded"], report["refused"]) == (1, 2)
    assert sorted(f["input"] for f in report["failures"]) == ["../x.png", "/etc/passwd"]
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "slide.tif", "x.png"]
    assert sorted(p.name for p in (tmp_path / "in" / "out").iterdir()) == [".tessera-batch.lock", "a.png", "manifest.jsonl"]
