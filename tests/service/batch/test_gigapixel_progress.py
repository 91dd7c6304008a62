"""A running gigapixel job's figures: tiles done / to do, skipped apart, in DST/manifest.jsonl
while it runs (read from inside the job) and on the command line's bar callback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.batch import segment_gigapixel
from service.batch.gigapixel import progress as progress_module
from service.batch.manifest import MANIFEST_NAME
from tests.support.batch import TILE
from tests.support.slides import tissue_image, write_svs

pytestmark = pytest.mark.usefixtures("one_thread")

#: Chunk edge (2 tile steps of the tiny model at TILE).
CHUNK = 104


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    return write_svs(tmp_path_factory.mktemp("slides") / "case.svs", tissue_image(400, 520, seed=4, share=0.25), mpp=0.5)


def records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST_NAME).read_text().splitlines()]


def test_the_manifest_follows_the_running_job(bundle: Path, svs: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "MANIFEST_INTERVAL", 0.0)  # a record per chunk, not per 2 s
    out = tmp_path / "out"
    seen, bar = [], []

    def chunk_done(done: int, total: int) -> None:
        latest = records(out)[-1]  # written before the callback: what a reader sees at this moment
        seen.append(latest)
        assert latest["status"] == "running" and latest["chunks_done"] == done and latest["chunks"] == total

    report = segment_gigapixel(bundle, svs, out, tile=TILE, chunk=CHUNK, slide={"mpp": 0.8}, progress=chunk_done,
                               tile_progress=lambda done, total, note="": bar.append((done, total, note)))
    assert [r["chunks_done"] for r in seen] == list(range(report.chunks + 1))
    done = [r["tiles_done"] for r in seen]
    assert done == sorted(done) and done[0] == 0 and done[-1] == report.tiles
    assert all(r["tiles"] == report.tiles and r["tiles_skipped"] == report.tiles_skipped for r in seen)
    assert 0 < report.tiles_skipped < report.tiles
    skipped_done = [r["tiles_skipped_done"] for r in seen]
    assert skipped_done[-1] == report.tiles_skipped and 0 < skipped_done[len(seen) // 2] < report.tiles_skipped
    assert seen[1]["eta_seconds"] is not None and seen[-1]["eta_seconds"] == 0
    # the bar counts computed tiles only, skipped ones in its note
    assert bar[-1] == (report.tiles - report.tiles_skipped, report.tiles - report.tiles_skipped,
                       f"{report.tiles_skipped} skipped: no tissue")
    final = records(out)
    assert len(final) == 1  # compacted: one line per input
    assert final[0]["status"] == "ok" and final[0]["input"] == "case.svs" and final[0]["output"] == "case.zarr"
    assert (final[0]["tiles_done"], final[0]["computed"], final[0]["skipped_share"]) == (
        report.tiles, report.chunks, report.skipped_share)


def test_an_interrupted_job_leaves_a_stopped_record_and_resumes_counting(bundle: Path, svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def stop(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_gigapixel(bundle, svs, out, tile=TILE, chunk=CHUNK, progress=stop)
    stopped = records(out)
    assert [r["status"] for r in stopped] == ["stopped"] and stopped[0]["chunks_done"] == 3
    assert stopped[0]["error"] == "KeyboardInterrupt: "
    first = []
    report = segment_gigapixel(bundle, svs, out, tile=TILE, chunk=CHUNK, progress=lambda d, t: first.append(d))
    assert first[0] == 3 and report.resumed == 3
    assert records(out)[-1]["status"] == "ok" and records(out)[-1]["resumed"] == 3
