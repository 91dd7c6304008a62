"""Gigapixel jobs with Gaussian blending: an interrupted, resumed blended job equals
``Predictor(..., blend="gaussian").predict`` on the whole image, byte for byte, and blending is
part of the job key (a blended rerun of a crop-only job starts over)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from service.batch import prepare, segment_gigapixel
from service.batch.gigapixel.plan import plan_chunks
from tests.support.batch import CLASSES, TILE, blob_probe, make_slide
from tests.support.bundles import make_bundle
from training.inference.predictor import Predictor
from training.io.writers import encode_probabilities

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:this model normalises")]

#: A tiny valid-padded U-Net with instance norm: its tiles are not exact, so blended and
#: crop-only predictions differ, and a chunk reproduces the blended one only with the right tiles.
INSTANCE_UNET = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "padding": "valid",
                 "norm": "instance"}
#: Chunk edge asked for (rounded to whole blended tile steps of 36 px: 108).
CHUNK = 104
HEIGHT, WIDTH = 250, 330


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The instance-norm U-Net, random weights, its head centred so both classes occur."""
    path = tmp_path_factory.mktemp("bundle") / "instance.safetensors"
    return make_bundle(INSTANCE_UNET, path, classes=CLASSES, batchnorm_statistics=False, probe=blob_probe()).path


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return path, make_slide(path, HEIGHT, WIDTH)


def test_the_blended_plan_reaches_the_overlapping_tiles(bundle: Path) -> None:
    _, crop = prepare(bundle, tile=TILE, device="cpu")
    _, blended = prepare(bundle, tile=TILE, device="cpu", blend="gaussian")
    grid = blended.grid(HEIGHT, WIDTH)
    assert grid.span_h > grid.step_h  # tiles overlap
    crop_plan, _ = plan_chunks(crop, HEIGHT, WIDTH, CHUNK)
    plan, chunks = plan_chunks(blended, HEIGHT, WIDTH, CHUNK)
    context = blended.geometry.context
    assert crop_plan.before == (context, context)
    assert plan.before == (grid.step_h + context, grid.step_w + context)  # one whole step back
    assert plan.after == (TILE - context - grid.step_h,) * 2
    assert chunks == (3 * grid.step_h, 3 * grid.step_w) and min(chunks) >= max(plan.least_chunk)


def test_a_resumed_blended_job_equals_the_blended_whole_image_prediction(bundle: Path, slide, tmp_path: Path) -> None:
    src, pixels = slide

    def stop(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt  # 5 of 12 chunks written and marked

    with pytest.raises(KeyboardInterrupt):
        segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, blend="gaussian",
                          progress=stop)
    report = segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK, probabilities=True, blend="gaussian")
    assert (report.chunks, report.resumed, report.computed) == (12, 5, 7)
    expected = Predictor(bundle, tile=TILE, blend="gaussian").predict(pixels, probabilities=True)
    group = zarr.open_group(str(tmp_path / "slide.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], expected.labels)
    np.testing.assert_array_equal(group["probabilities/0"][:], encode_probabilities(expected.probabilities, np.uint8))
    assert 0.05 < expected.labels.mean() < 0.95
    crop = Predictor(bundle, tile=TILE).predict(pixels).labels
    assert (crop != expected.labels).any()  # blending is what made these labels
    assert group.attrs["tessera"]["blend"] == {"mode": "gaussian", "overlap": 0.25, "sigma_scale": 0.125}


def test_blending_is_part_of_the_job_key(bundle: Path, slide, tmp_path: Path) -> None:
    src, pixels = slide
    crop = segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK)
    again = segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK)
    assert again.complete_before
    blended = segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK, blend="gaussian")
    assert (blended.complete_before, blended.resumed, blended.computed) == (False, 0, blended.chunks)
    assert crop.chunk != blended.chunk  # blended tiles step 36 px, crop-only ones 52 px
    wider = segment_gigapixel(bundle, src, tmp_path, tile=TILE, chunk=CHUNK, blend="gaussian", overlap=0.5)
    assert (wider.complete_before, wider.resumed) == (False, 0)
    expected = Predictor(bundle, tile=TILE, blend="gaussian", overlap=0.5).predict(pixels).labels
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "slide.zarr" / "0"), mode="r")[:], expected)
