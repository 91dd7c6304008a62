"""Gigapixel jobs on whole-slide images: tiles without tissue skipped, in-process equal to
``tessera predict`` and to a Dask run, the OME-Zarr in micrometres."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from service.batch import segment_gigapixel
from service.batch.gigapixel import run_gigapixel
from tests.support.batch import TILE, tree_bytes
from tests.support.slides import tissue_image, write_svs
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.inference.slide import prepare_slide
from training.inference.to_file import predict_to_file

pytestmark = pytest.mark.usefixtures("one_thread")

#: Chunk edge (2 tile steps of the tiny model at TILE).
CHUNK = 104


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    return write_svs(tmp_path_factory.mktemp("slides") / "case.svs", tissue_image(400, 520, seed=4, share=0.25), mpp=0.5)


def test_slide_job_equals_predict_with_skips(bundle: Path, svs: Path, tmp_path: Path) -> None:
    report = segment_gigapixel(bundle, svs, tmp_path / "out", tile=TILE, chunk=CHUNK, slide={"mpp": 0.8})
    assert report.output == str(tmp_path / "out" / "case.zarr") and report.shape == [250, 325]
    assert 0 < report.tiles_skipped < report.tiles and report.skipped_share == round(report.tiles_skipped / report.tiles, 6)
    assert report.slide["downscale"] == "8/5" and report.slide["to_level0"] == 1.6
    assert Path(report.tissue_mask).is_file() and not list((tmp_path / "out").glob(".*partial"))
    predictor = Predictor(bundle, InferenceOptions(tile=TILE))
    job = prepare_slide(svs, predictor.info, mpp=0.8)
    try:
        predict_to_file(predictor, job.source, tmp_path / "direct.npy", stats=job.stats(predictor.info.normalization), skip=job.skip)
    finally:
        job.close()
    labels = zarr.open_group(str(tmp_path / "out" / "case.zarr"), mode="r")
    np.testing.assert_array_equal(labels["0"][:], np.load(tmp_path / "direct.npy"))
    multiscales = labels.attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in multiscales["axes"]] == ["micrometer", "micrometer"]
    assert multiscales["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.6, 1.6]
    assert labels.attrs["tessera"]["slide"]["mpp"] == 0.8


def test_another_tissue_setting_starts_over(bundle: Path, svs: Path, tmp_path: Path) -> None:
    first = segment_gigapixel(bundle, svs, tmp_path / "out", tile=TILE, chunk=CHUNK, slide={"level": 1})
    again = segment_gigapixel(bundle, svs, tmp_path / "out", tile=TILE, chunk=CHUNK, slide={"level": 1})
    assert not first.complete_before and again.complete_before
    none = segment_gigapixel(bundle, svs, tmp_path / "out", tile=TILE, chunk=CHUNK, slide={"level": 1, "tissue": "none"})
    assert not none.complete_before and none.tiles_skipped == 0 and none.tissue_mask is None


def test_slide_options_on_a_plain_tiff_are_refused(bundle: Path, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="for whole-slide images only"):
        segment_gigapixel(bundle, tmp_path / "flat.tif", tmp_path / "out", tile=TILE, slide={"mpp": 0.5})


def test_slide_job_on_local_2_equals_in_process(bundle: Path, local2, svs: Path, tmp_path: Path) -> None:
    spec, predictor, runner = local2
    report = run_gigapixel(svs, tmp_path / "dask", spec, predictor, runner, chunk=CHUNK, slide={"mpp": 0.8})
    assert report.tiles_skipped > 0
    segment_gigapixel(bundle, svs, tmp_path / "here", tile=TILE, chunk=CHUNK, slide={"mpp": 0.8}, device="cpu")
    expected = tree_bytes(tmp_path / "here")
    assert any(name.startswith("case.zarr/0/c/") for name in expected)
    assert tree_bytes(tmp_path / "dask") == expected
    assert json.loads((tmp_path / "dask" / "case.zarr" / "zarr.json").read_text())["attributes"]["tessera"]["slide"]["mpp"] == 0.8
