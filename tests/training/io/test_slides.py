"""Whole-slide reading: real SVS and OME-TIFF files, levels, mpp, virtual levels, bad files."""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_multiscales_metadata

from tests.support.slides import pyramid, tissue_image, write_ome_tiff, write_svs
from training.io.images import ImageError
from training.io.physical import level_datasets, space_axes
from training.io.slides import (
    ResolutionError,
    VirtualLevel,
    area_downscale,
    choose_resolution,
    is_slide_path,
    open_slide,
    over_white,
)
from training.mirror import mirror_window


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tissue_image(1200, 1600, seed=3)


@pytest.fixture(scope="module")
def svs(tmp_path_factory, image):
    return write_svs(tmp_path_factory.mktemp("svs") / "slide.svs", image, mpp=0.5, magnification=20)


@pytest.fixture(scope="module")
def ome(tmp_path_factory, image):
    return write_ome_tiff(tmp_path_factory.mktemp("ome") / "slide.ome.tif", image, mpp=250, unit="nm", compression=None)


def test_svs_is_read_by_openslide_as_aperio(svs, image):
    with open_slide(svs) as slide:
        info = slide.info
        assert (info.vendor, info.reader) == ("aperio", "openslide")
        assert [(lv.height, lv.width) for lv in info.levels] == [(1200, 1600), (300, 400), (75, 100)]
        assert info.mpp == (0.5, 0.5) and info.objective_power == 20.0
        assert info.level_mpp(1) == pytest.approx(2.0)
        level0 = slide.level(0)
        assert level0.shape == (1200, 1600, 3) and level0.dtype == np.uint8
        decoded = tifffile.imread(svs, key=0)
        np.testing.assert_array_equal(level0[300:700, 250:900], decoded[300:700, 250:900])
        assert np.abs(level0[:, :].astype(int) - image).mean() < 3  # JPEG, quality 95
        level1 = tifffile.imread(svs, key=2)
        np.testing.assert_array_equal(slide.level(1)[10:200, 30:310], level1[10:200, 30:310])


def test_info_is_json(svs):
    with open_slide(svs) as slide:
        data = json.loads(json.dumps(slide.info.to_dict()))
    assert data["format"] == "aperio" and data["objective_power"] == 20.0
    assert data["levels"][2] == {"level": 2, "width": 100, "height": 75, "downsample": 16.0, "mpp": 8.0}


def test_ome_tiff_pyramid_and_physical_size(ome, image):
    assert is_slide_path(ome)
    with open_slide(ome) as slide:
        info = slide.info
        assert (info.vendor, info.reader) == ("ome-tiff", "tifffile")
        assert info.mpp == pytest.approx((0.25, 0.25))  # 250 nm
        assert [(lv.height, lv.width) for lv in info.levels] == [(1200, 1600), (300, 400), (75, 100)]
        np.testing.assert_array_equal(slide.level(0)[100:900, 7:1599], image[100:900, 7:1599])
        np.testing.assert_array_equal(slide.level(2)[:, :], pyramid(image, 3)[2])


def test_a_plain_tiff_is_not_a_slide(tmp_path, image):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, image)
    assert not is_slide_path(path) and is_slide_path(tmp_path / "x.svs")
    deep = tmp_path / "deep.tif"  # a 16-bit pyramid stays a plain image (read at full resolution)
    with tifffile.TiffWriter(deep) as writer:
        writer.write(np.zeros((512, 512), np.uint16), subifds=1, tile=(256, 256))
        writer.write(np.zeros((256, 256), np.uint16), subfiletype=1, tile=(256, 256))
    assert not is_slide_path(deep)


def test_rgba_over_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 100, 255, 128]]], np.uint8)
    np.testing.assert_array_equal(over_white(rgba), [[[10, 20, 30], [255, 255, 255], [127, 177, 255]]])


def test_area_downscale_integer_factor_is_the_block_mean():
    block = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = area_downscale(block, Fraction(2), 2, 3)
    expected = (block.reshape(2, 2, 3, 2, 3).astype(int).sum(axis=(1, 3)) + 2) // 4
    np.testing.assert_array_equal(out, expected)


def test_area_downscale_matches_opencv_area(image):
    crop = image[:1000, :1500]
    ours = area_downscale(crop, Fraction(5, 2), 400, 600)
    theirs = cv2.resize(crop, (600, 400), interpolation=cv2.INTER_AREA)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


@pytest.mark.parametrize("factor", [Fraction(8, 5), Fraction(2), Fraction(7, 3)])
def test_virtual_level_windows_equal_the_whole_downscale(ome, factor):
    with open_slide(ome) as slide:
        level0 = slide.level(0)
        virtual = VirtualLevel(level0, factor)
        height, width = virtual.shape[:2]
        assert (height, width) == (1200 * factor.denominator // factor.numerator, 1600 * factor.denominator // factor.numerator)
        whole = area_downscale(level0[:, :], factor, height, width)
        np.testing.assert_array_equal(virtual[:, :], whole)
        rng = np.random.default_rng(0)
        for _ in range(25):
            y0, x0 = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
            y1, x1 = int(rng.integers(y0 + 1, height + 1)), int(rng.integers(x0 + 1, width + 1))
            np.testing.assert_array_equal(virtual[y0:y1, x0:x1], whole[y0:y1, x0:x1])
        # A tiler window reaching past the border reads only inside and mirrors.
        np.testing.assert_array_equal(mirror_window(virtual, -20, 90, width - 50, width + 30),
                                      mirror_window(whole, -20, 90, width - 50, width + 30))


def test_resolution_choice(svs):
    with open_slide(svs) as slide:
        info = slide.info
        assert choose_resolution(info).level == 0
        matched = choose_resolution(info, mpp=2.15)  # within 10% of level 1
        assert (matched.level, matched.factor, matched.to_level0) == (1, 1, 4.0)
        model = choose_resolution(info, model_mpp=0.8)  # levels are 0.5, 2, 8 µm: none within 10%
        assert (model.level, model.factor, model.mpp, model.to_level0) == (0, Fraction(8, 5), 0.8, 1.6)
        coarse = choose_resolution(info, mpp=3.0)
        assert (coarse.level, coarse.factor, coarse.mpp) == (1, Fraction(3, 2), 3.0)
        assert slide.source(model).shape == (750, 1000, 3)
        assert choose_resolution(info, level=2, model_mpp=0.8).to_dict() == {"level": 2, "downscale": "1", "mpp": 8.0, "to_level0": 16.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"level": 3}, "level 3 does not exist (the slide has levels 0..2)"),
     ({"level": -1}, "level -1 does not exist"),
     ({"mpp": 0.2}, "mpp 0.2 is finer than level 0 (0.5 µm per pixel)"),
     ({"mpp": -1.0}, "mpp must be a positive number"),
     ({"mpp": 1.0, "level": 1}, "either a level or an mpp")],
)
def test_bad_resolutions_are_one_line_errors(svs, kwargs, message):
    with open_slide(svs) as slide, pytest.raises(ResolutionError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        choose_resolution(slide.info, **kwargs)
    assert "\n" not in str(caught.value)


def test_mpp_without_slide_mpp_is_refused(tmp_path, image):
    path = tmp_path / "nompp.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(image, subifds=1, tile=(256, 256), metadata=None)
        writer.write(pyramid(image, 2)[1], subfiletype=1, tile=(256, 256))
    with open_slide(path) as slide, pytest.raises(ResolutionError, match="records no microns per pixel"):
        choose_resolution(slide.info, mpp=1.0)


def test_truncated_slide_is_a_one_line_error(tmp_path, svs):
    data = svs.read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError) as caught, open_slide(path) as slide:
        slide.level(0)[:, :]
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_non_slide_renamed_svs_is_refused(tmp_path):
    path = tmp_path / "photo.svs"
    _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    path.write_bytes(png.tobytes())
    with pytest.raises(ImageError, match="not a slide format") as caught:
        open_slide(path)
    assert caught.value.reason == "unsupported"
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        open_slide(tmp_path / "empty.svs")
    with pytest.raises(ImageError, match="no such file"):
        open_slide(tmp_path / "missing.svs")


def test_ome_zarr_physical_pixel_size(tmp_path):
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w", zarr_format=3)
    group.create_array("0", shape=(64, 64), dtype="uint8")
    group.create_array("1", shape=(32, 32), dtype="uint8")
    write_multiscales_metadata(group, level_datasets(2, 0.8), fmt=FormatV05(), axes=space_axes(0.8), name="labels")
    node = next(iter(Reader(parse_url(str(tmp_path / "labels.zarr")))()))
    multiscales = node.metadata
    assert [a["unit"] for a in multiscales["axes"]] == ["micrometer", "micrometer"]
    assert multiscales["coordinateTransformations"][1][0]["scale"] == [1.6, 1.6]
    assert level_datasets(1, None, lead_axes=1)[0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert "unit" not in space_axes(None)[0]
