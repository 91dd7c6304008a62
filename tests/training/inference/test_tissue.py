"""Tissue detection on real slide files, user masks, and the box queries tiles are skipped by."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.support.slides import WHITE, tissue_image, write_ome_tiff, write_svs
from training.inference.tissue import (
    TissueMask,
    detect_tissue,
    read_mask,
    thumbnail,
    tissue_from_rgb,
    write_mask_png,
)
from training.io.images import ImageError
from training.io.slides import open_slide


def disc(height: int, width: int, share: float = 0.3) -> np.ndarray:
    yy, xx = np.ogrid[0:height, 0:width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < share * height * width / np.pi


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    image = tissue_image(1200, 1600, seed=5)
    rng = np.random.default_rng(1)
    for y, x in rng.integers(0, 150, (12, 2)):  # dust: 3 px specks on the glass, far from the disc
        image[y : y + 3, x : x + 3] = 60
    return write_svs(tmp_path_factory.mktemp("tissue") / "slide.svs", image, mpp=0.5)


def test_detects_the_tissue_disc_and_drops_dust(svs):
    with open_slide(svs) as slide:
        tissue, image = detect_tissue(slide)
    assert tissue.mask.shape == image.shape[:2] == (1200, 1600)
    truth = disc(1200, 1600)
    agreement = (tissue.mask == truth).mean()
    assert agreement > 0.99 and abs(tissue.share - 0.3) < 0.01
    assert not tissue.mask[:160, :160].any()  # dust removed
    assert tissue.threshold is not None and tissue.threshold >= 0.1


def test_empty_glass_has_no_tissue():
    glass = np.full((200, 300, 3), WHITE, np.uint8)
    glass += np.random.default_rng(0).integers(0, 4, glass.shape, dtype=np.uint8)
    tissue = tissue_from_rgb(glass, 8.0, (2000, 3000))
    assert tissue.share == 0.0 and tissue.threshold is None
    assert not tissue.any_in(0, 2000, 0, 3000)


def test_box_queries_in_level0_pixels():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 100:120] = True  # level-0 rows 400..600, columns 1000..1200 (factor 10)
    tissue = TissueMask(mask, (1000, 2000))
    assert tissue.any_in(450, 460, 1050, 1060)
    assert tissue.any_in(0, 395, 0, 995)  # within one mask pixel: kept
    assert not tissue.any_in(0, 380, 0, 980)
    assert not tissue.any_in(700, 1000, 0, 2000)
    select = tissue.selector(4.0)  # pixels of a level 4x coarser than level 0
    assert select(110, 120, 255, 270) and not select(0, 50, 0, 50)
    assert tissue.share == pytest.approx(400 / 20000)


def test_user_mask_any_resolution(tmp_path):
    path = tmp_path / "mask.png"
    small = (disc(120, 160) * 255).astype(np.uint8)
    cv2.imwrite(str(path), small)
    tissue = read_mask(path, (1200, 1600))
    assert tissue.mask.shape == (120, 160) and tissue.source == str(path)
    assert tissue.any_in(590, 610, 790, 810) and not tissue.any_in(0, 50, 0, 50)
    cv2.imwrite(str(tmp_path / "near.png"), np.zeros((121, 160), np.uint8))  # rounding of the size: accepted
    read_mask(tmp_path / "near.png", (1200, 1600))


def test_user_mask_of_the_wrong_aspect_is_refused(tmp_path):
    path = tmp_path / "wrong.png"
    cv2.imwrite(str(path), np.zeros((160, 120), np.uint8))
    with pytest.raises(ImageError, match="the mask must cover the whole slide") as caught:
        read_mask(path, (1200, 1600))
    assert "120x160" in str(caught.value) and "\n" not in str(caught.value)


def test_thumbnail_of_a_slide_larger_than_the_side(tmp_path):
    image = tissue_image(1200, 1600, seed=2)
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, compression=None)
    with open_slide(path) as slide:
        small, level = thumbnail(slide, side=500)
        assert (level, small.shape) == (1, (300, 400, 3))
        tiny, level = thumbnail(slide, side=60)
        assert (level, tiny.shape) == (2, (37, 50, 3))
        np.testing.assert_array_equal(tiny[5:10, 5:10], ((slide.level(2)[10:20, 10:20].reshape(5, 2, 5, 2, 3).astype(int).sum(axis=(1, 3)) + 2) // 4))


def test_mask_png_is_written(tmp_path, svs):
    with open_slide(svs) as slide:
        tissue, image = detect_tissue(slide)
    overlay = write_mask_png(tmp_path / "labels.tissue.png", tissue, image)
    written = cv2.imread(str(overlay))
    assert written.shape == (1200, 1600, 3)
    plain = write_mask_png(tmp_path / "plain.png", tissue)
    np.testing.assert_array_equal(cv2.imread(str(plain), cv2.IMREAD_GRAYSCALE) > 0, tissue.mask)
