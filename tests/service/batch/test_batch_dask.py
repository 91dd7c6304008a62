"""Dask runs (LocalCluster of 2 worker processes) are byte-identical to in-process runs, for both
job kinds, and each worker loads the model once (WorkerPlugin), not once per task."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.batch.scheduler as scheduler
from service.batch import segment_folder, segment_gigapixel
from service.batch.folder import FolderOptions, run_folder
from service.batch.gigapixel import run_gigapixel
from service.batch.scheduler import PredictorSpec, parse_scheduler
from tests.support.batch import TILE, leftovers, make_folder, make_slide, tree_bytes
from training.inference.options import InferenceOptions

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: Gigapixel chunk edge (2 tile steps): 12 chunks for the slide below.
CHUNK = 104


def test_folder_job_on_local_2_equals_in_process(bundle: Path, local2, tmp_path: Path) -> None:
    spec, _, runner = local2
    make_folder(tmp_path / "src", 8)
    (tmp_path / "src" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n....")
    options = FolderOptions(overlay=True, probabilities=True)
    local = run_folder(str(tmp_path / "src"), tmp_path / "local", spec, runner, options)
    here = segment_folder(bundle, tmp_path / "src", tmp_path / "here", tile=TILE, overlay=True, probabilities=True)
    assert (local.scheduler, local.succeeded, local.failed) == ("local:2", 8, 1)
    assert (here.succeeded, here.failed) == (8, 1)
    expected = tree_bytes(tmp_path / "here")
    assert len(expected) == 24 and tree_bytes(tmp_path / "local") == expected
    assert leftovers(tmp_path / "local") == []


def test_gigapixel_job_on_local_2_equals_in_process(bundle: Path, local2, tmp_path: Path) -> None:
    spec, predictor, runner = local2
    slide = tmp_path / "slide.tif"
    make_slide(slide, 250, 330)
    report = run_gigapixel(slide, tmp_path / "dask", spec, predictor, runner, probabilities=True, tiff=True, chunk=CHUNK)
    assert report.chunks == 12 and report.computed == 12
    segment_gigapixel(bundle, slide, tmp_path / "here", tile=TILE, chunk=CHUNK, probabilities=True, tiff=True)
    expected = tree_bytes(tmp_path / "here")
    assert any(name.startswith("slide.zarr/0/c/") for name in expected)
    assert tree_bytes(tmp_path / "dask") == expected


def test_each_worker_loaded_the_model_once(local2) -> None:
    """After 9 + 12 tasks on 2 workers: one load per worker process (the WorkerPlugin's)."""
    _, _, runner = local2
    loads = runner.client.run(lambda: sum(scheduler.LOADS.values()))
    assert sorted(loads.values()) == [1, 1]


def test_scheduler_parsing_and_spec_key() -> None:
    assert parse_scheduler("in-process") == ("in-process", None)
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://127.0.0.1:8786") == ("remote", "tcp://127.0.0.1:8786")
    for bad in ("local:0", "local:x", "cluster", "tcp://", "http://host:1"):
        with pytest.raises(ValueError, match="scheduler"):
            parse_scheduler(bad)
    spec = PredictorSpec("b", "s", InferenceOptions(tile=92))
    assert spec.key() == PredictorSpec("b", "s", InferenceOptions(tile=92)).key() != PredictorSpec("b", "s", InferenceOptions(tile=96)).key()
