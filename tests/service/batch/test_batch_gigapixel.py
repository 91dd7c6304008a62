"""Gigapixel jobs in this process: chunks equal the whole-image prediction, OME-Zarr layout and
pyramid, BigTIFF, resume at chunk granularity with done-markers (not chunk presence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from service.batch import segment_gigapixel
from service.batch.gigapixel.plan import chunk_shape
from service.batch.gigapixel.state import DONE_FOLDER, output_stem
from tests.support.batch import TILE, leftovers, make_slide, tree_bytes
from training.inference.predictor import Predictor
from training.io.writers import encode_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: Chunk edge asked for: 2 tile steps of 52 px.
CHUNK = 104
HEIGHT, WIDTH = 250, 330


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    return path, make_slide(path, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def reference(bundle: Path, slide, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """One uninterrupted in-process run (with probabilities and BigTIFF)."""
    dst = tmp_path_factory.mktemp("reference")
    segment_gigapixel(bundle, slide[0], dst, tile=TILE, chunk=CHUNK, probabilities=True, tiff=True)
    return dst, tree_bytes(dst)


def test_chunks_equal_the_whole_image_prediction(bundle: Path, slide, reference) -> None:
    dst, _ = reference
    pixels = slide[1]
    expected = Predictor(bundle, tile=TILE).predict(pixels, probabilities=True)
    group = zarr.open_group(str(dst / "slide.zarr"), mode="r")
    labels = group["0"][:]
    np.testing.assert_array_equal(labels, expected.labels)
    assert 0.05 < labels.mean() < 0.95
    np.testing.assert_array_equal(group["probabilities/0"][:], encode_probabilities(expected.probabilities, np.uint8))
    np.testing.assert_array_equal(tifffile.imread(dst / "slide.tif"), expected.labels)
    assert group["0"].chunks == (CHUNK, CHUNK)


def test_ome_zarr_layout_and_pyramid(reference) -> None:
    dst, _ = reference
    group = zarr.open_group(str(dst / "slide.zarr"), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]  # 330 -> 165 -> 83 <= one chunk
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [4.0, 4.0]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert [p["class"] for p in ome["image-label"]["properties"]] == ["background", "cell"]
    full = group["0"][:]
    np.testing.assert_array_equal(group["1"][:], full[::2, ::2])
    np.testing.assert_array_equal(group["2"][:], full[::4, ::4])
    probabilities = group["probabilities"]
    assert [a["name"] for a in probabilities.attrs["ome"]["multiscales"][0]["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(probabilities["1"][:], probabilities["0"][:, ::2, ::2])
    assert group.attrs["tessera"]["classes"] == ["background", "cell"]
    assert not (dst / "slide.zarr" / DONE_FOLDER).exists() and leftovers(dst) == []


def test_ome_zarr_reader_opens_it(reference) -> None:
    dst, _ = reference
    nodes = list(Reader(parse_url(str(dst / "slide.zarr")))())
    assert nodes and [tuple(level.shape) for level in nodes[0].data] == [(HEIGHT, WIDTH), (125, 165), (63, 83)]


def test_interrupted_run_resumes_the_missing_chunks_only(bundle: Path, slide, reference, tmp_path: Path) -> None:
    _, expected = reference
    seen = []

    def stop_after_three(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, tiff=True,
                          progress=stop_after_three)
    partial = tmp_path / ".slide.zarr.partial"
    assert len(list((partial / DONE_FOLDER).iterdir())) == 3 and not (tmp_path / "slide.zarr").exists()
    report = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, tiff=True)
    assert (report.chunks, report.resumed, report.computed) == (12, 3, 9)
    assert tree_bytes(tmp_path) == expected
    assert leftovers(tmp_path) == []
    again = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, tiff=True)
    assert again.complete_before and again.computed == 0


def test_a_missing_marker_means_not_done_even_if_the_chunk_exists(bundle: Path, slide, tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == total:
            raise KeyboardInterrupt  # every chunk written and marked, nothing finished

    with pytest.raises(KeyboardInterrupt):
        segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, progress=stop)
    partial = tmp_path / ".slide.zarr.partial"
    labels = zarr.open_array(str(partial / "0"), mode="r+")
    good = labels[0:CHUNK, 0:CHUNK].copy()
    labels[0:CHUNK, 0:CHUNK] = 1 - good  # a chunk file exists but holds wrong data
    (partial / DONE_FOLDER / "0.0").unlink()
    report = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK)
    assert (report.resumed, report.computed) == (11, 1)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "slide.zarr" / "0"), mode="r")[0:CHUNK, 0:CHUNK], good)


def test_a_killed_writers_zarr_temporary_is_swept_before_finishing(bundle: Path, slide, reference, tmp_path: Path) -> None:
    """A Dask worker SIGKILLed inside zarr's write leaves ``CHUNK.<32 hex>.partial`` beside the chunk
    its retry rewrites, in the same run; the finished output must not carry it (it did once, in CI)."""
    _, expected = reference
    stale = tmp_path / ".slide.zarr.partial" / "0" / "c" / "1" / f"0.{'ab' * 16}.partial"

    def plant(done: int, total: int) -> None:
        if done == 3:
            stale.parent.mkdir(parents=True, exist_ok=True)
            stale.write_bytes(b"half a chunk")

    segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, tiff=True, progress=plant)
    assert tree_bytes(tmp_path) == expected
    assert leftovers(tmp_path) == []


def test_changed_settings_start_over(bundle: Path, slide, tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, progress=stop)
    report = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=2 * CHUNK)
    assert (report.resumed, report.computed, report.chunk) == (0, 4, [208, 208])


def test_a_threshold_is_its_own_job(bundle: Path, slide, tmp_path: Path) -> None:
    """A threshold changes the labels and the job: none of the finished job's chunks are reused."""
    first = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK)
    report = segment_gigapixel(bundle, slide[0], tmp_path, tile=TILE, chunk=CHUNK, threshold=0.0)
    assert (report.complete_before, report.resumed, report.computed) == (False, 0, first.computed)
    group = zarr.open_group(str(report.output), mode="r")
    assert (group["0"][:] == 1).all() and group.attrs["tessera"]["threshold"] == 0.0


def test_zarr_input_rgb_model_refused_and_name(bundle: Path, slide, tmp_path: Path) -> None:
    source = tmp_path / "in.zarr"
    array = zarr.create_array(str(source), shape=(HEIGHT, WIDTH), chunks=(100, 100), dtype=np.uint16, zarr_format=3)
    array[:] = slide[1].astype(np.uint16) * 200
    report = segment_gigapixel(bundle, source, tmp_path / "out", tile=TILE)
    expected = Predictor(bundle, tile=TILE).predict(array[:]).labels
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out" / "in.zarr" / "0"), mode="r")[:], expected)
    assert report.chunk == [260, 364] and report.chunks == 1
    with pytest.raises(ValueError, match="overwrite the input"):
        segment_gigapixel(bundle, source, tmp_path, tile=TILE)
    with pytest.raises(ValueError, match="not an existing TIFF"):
        segment_gigapixel(bundle, tmp_path / "missing.tif", tmp_path, tile=TILE)


def test_chunk_shape_and_names() -> None:
    assert chunk_shape(10_000, 10_000, 388, 388, None) == (1164, 1164)
    assert chunk_shape(300, 10_000, 388, 388, 100) == (388, 388)
    assert chunk_shape(100, 100, 52, 52, 1000) == (104, 104)
    assert output_stem(Path("a/slide.ome.tiff")) == "slide" and output_stem(Path("x.zarr")) == "x"
    assert json.dumps(chunk_shape(1, 1, 4, 4, 1)) == "[4, 4]"
    with pytest.raises(ValueError):
        chunk_shape(10, 10, 4, 4, -1)
