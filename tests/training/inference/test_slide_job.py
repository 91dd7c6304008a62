"""A slide made ready for the predictor: resolution from the bundle, gray sources, tissue, background."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import cv2
import numpy as np
import pytest

from tests.support.slides import tissue_image, write_svs
from training.bundle import DEFAULT_BUNDLE, load_bundle
from training.inference.skipping import TileSkip, background_index
from training.inference.slide import bundle_mpp, prepare_slide
from training.inference.tiling import Tile
from training.io.images import ImageError


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    return write_svs(tmp_path_factory.mktemp("job") / "slide.svs", tissue_image(1200, 1600, seed=7), mpp=0.5)


@pytest.fixture(scope="module")
def info():
    return load_bundle(DEFAULT_BUNDLE).info


def with_mpp(info, mpp):
    provenance = {**info.provenance, "config": {**info.provenance["config"], "data": {**info.provenance["config"]["data"], "mpp": mpp}}}
    return replace(info, provenance=provenance)


def test_background_class_choice():
    assert background_index(["background", "tumor"], None) == 0
    assert background_index(["membrane", "cell"], "cell") == 1
    assert background_index(["membrane", "cell"], "0") == 0
    with pytest.raises(ValueError, match="--background-class is required.*membrane, cell"):
        background_index(["membrane", "cell"], None)
    with pytest.raises(ValueError, match="'glass' is not one of the model's classes"):
        background_index(["membrane", "cell"], "glass")
    with pytest.raises(ValueError, match="out of range"):
        background_index(["membrane", "cell"], 5)


def test_skipped_tiles_are_certain_background():
    skip = TileSkip(lambda y0, y1, x0, x1: x0 < 10, 1)
    block = skip.block(3, 2, 4)
    assert block.shape == (3, 2, 4) and (block[1] == 1).all() and block[[0, 2]].sum() == 0
    assert (TileSkip(None, 0).block(1, 2, 2) == 0).all() and (TileSkip(None, 1).block(1, 2, 2) == 1).all()
    tiles = [Tile(0, c, (0, 8, c * 8, c * 8 + 8), (0, 8, c * 8, c * 8 + 8), (0, 0)) for c in range(3)]
    computed, skipped = skip.split(tiles)
    assert [t.col for t in computed] == [0, 1] and [t.col for t in skipped] == [2]


def test_the_bundle_mpp_chooses_the_resolution(svs, info):
    assert bundle_mpp(info) is None  # the shipped ISBI model records none
    job = prepare_slide(svs, with_mpp(info, 0.8), tissue="none")
    try:
        assert (job.resolution.level, job.resolution.factor, job.resolution.to_level0) == (0, Fraction(8, 5), 1.6)
        assert job.source.shape == (750, 1000) and job.skip is None and job.tissue is None
        window = job.source[100:200, 300:420]
        assert window.shape == (100, 120) and window.dtype == np.uint8
        assert job.attributes()["slide"]["mpp"] == 0.8
    finally:
        job.close()
    job = prepare_slide(svs, with_mpp(info, 0.8), mpp=2.0, tissue="none")  # the user's mpp wins
    assert job.resolution.level == 1
    job.close()


def test_tissue_auto_needs_a_background_class(svs, info):
    with pytest.raises(ValueError, match="--background-class is required"):
        prepare_slide(svs, info)
    job = prepare_slide(svs, info, background="cell")
    try:
        assert job.skip.background == 1 and 0.25 < job.tissue.share < 0.35
        assert job.skip.computes(590, 610, 790, 810) and not job.skip.computes(0, 50, 0, 50)
        mean, std = job.stats(info.normalization)
        assert 0.5 < float(mean[0]) < 1 and float(std[0]) > 0.05
    finally:
        job.close()


def test_user_mask_and_its_errors(tmp_path, svs, info):
    mask = np.zeros((60, 80), np.uint8)
    mask[:, :40] = 255
    cv2.imwrite(str(tmp_path / "left.png"), mask)
    job = prepare_slide(svs, info, tissue=str(tmp_path / "left.png"), background=0, level=1)
    try:
        assert job.resolution.to_level0 == 4.0
        assert job.skip.computes(0, 10, 0, 10) and not job.skip.computes(0, 10, 300, 400)
        assert job.write_mask(tmp_path / "labels.tissue.png").exists()
    finally:
        job.close()
    cv2.imwrite(str(tmp_path / "tall.png"), np.zeros((80, 60), np.uint8))
    with pytest.raises(ImageError, match="the mask must cover the whole slide"):
        prepare_slide(svs, info, tissue=str(tmp_path / "tall.png"), background=0)
