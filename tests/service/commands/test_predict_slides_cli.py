"""``tessera predict`` on real slide files: tissue skipping, resolution, objects, one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import shapely
import zarr

from service.cli import main
from tests.support.slides import tissue_image, write_svs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    return write_svs(tmp_path_factory.mktemp("cli") / "slide.svs", tissue_image(600, 800, seed=11, share=0.25), mpp=0.5)


def predict(capsys, *args: str) -> dict:
    assert main(["predict", *args, "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_tissue_auto_equals_tissue_none_on_tissue_tiles(tmp_path, capsys, svs, tiny_bundle):
    auto = predict(capsys, str(tiny_bundle), str(svs), "-o", str(tmp_path / "auto.zarr"), "--tile", "96",
                   "--objects", str(tmp_path / "objects.geojson"))
    none = predict(capsys, str(tiny_bundle), str(svs), "-o", str(tmp_path / "none.zarr"), "--tile", "96", "--tissue", "none")
    assert 0.3 < auto["skipped_share"] < 0.9 and none["skipped_share"] == 0 and none["tissue_mask"] is None
    assert auto["slide"]["tissue"]["source"] == "auto" and auto["slide"]["mpp"] == 0.5
    assert (tmp_path / "auto.tissue.png").exists()
    image = zarr.open_group(str(tmp_path / "auto.zarr"), mode="r")  # an OME-Zarr label image
    with_skips, without = image["0"], zarr.open_group(str(tmp_path / "none.zarr"), mode="r")["0"]
    assert image.attrs["tessera"]["slide"]["to_level0"] == 1.0
    tissue = cv2.imread(str(tmp_path / "auto.tissue.png"))  # the thumbnail is level 0 here (800 px)
    assert tissue.shape[:2] == (600, 800)
    labels = np.asarray(with_skips[:])
    differ = labels != np.asarray(without[:])
    assert (labels[differ] == 0).all()  # only where skipped tiles are background
    assert not differ[250:350, 350:450].any()  # the middle of the tissue: computed, equal
    mask = json.loads((tmp_path / "objects.geojson").read_text())
    assert auto["object_count"] == len(mask["features"])
    areas = sum(shapely.geometry.shape(f["geometry"]).area for f in mask["features"])
    assert areas == (labels == 1).sum()
    assert all(f["properties"]["classification"]["name"] == "foreground" for f in mask["features"])


def test_a_coarser_level_records_its_factor(tmp_path, capsys, svs, tiny_bundle):
    out = predict(capsys, str(tiny_bundle), str(svs), "-o", str(tmp_path / "l1.zarr"), "--tile", "96", "--level", "1",
                  "--objects", str(tmp_path / "l1.geojson"), "--object-type", "detection")
    assert out["size"] == [150, 200] and out["slide"]["to_level0"] == 4.0
    image = zarr.open_group(str(tmp_path / "l1.zarr"), mode="r")
    labels = np.asarray(image["0"][:])
    multiscales = image.attrs["ome"]["multiscales"][0]
    assert [axis["unit"] for axis in multiscales["axes"]] == ["micrometer", "micrometer"]
    assert [d["coordinateTransformations"][0]["scale"] for d in multiscales["datasets"]][:2] == [[2.0, 2.0], [4.0, 4.0]]
    np.testing.assert_array_equal(image["1"][:], labels[::2, ::2])  # the pyramid: every other pixel
    assert image.attrs["ome"]["image-label"]["properties"][1]["class"] == "foreground"
    features = json.loads((tmp_path / "l1.geojson").read_text())["features"]
    assert sum(shapely.geometry.shape(f["geometry"]).area for f in features) == 16 * (labels == 1).sum()
    assert {f["properties"]["objectType"] for f in features} <= {"detection"}


def test_virtual_level_from_mpp(tmp_path, capsys, svs, tiny_bundle):
    out = predict(capsys, str(tiny_bundle), str(svs), "-o", str(tmp_path / "v.zarr"), "--tile", "96", "--mpp", "0.8",
                  "--tissue", "none")
    assert out["size"] == [375, 500] and out["slide"]["downscale"] == "8/5" and out["slide"]["to_level0"] == 1.6


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--level", "7"], "level 7 does not exist"),
     (["--mpp", "0.1"], "is finer than level 0"),
     (["--background-class", "tumour"], "'tumour' is not one of the model's classes")],
)
def test_bad_slide_options_are_one_line(tmp_path, capsys, svs, tiny_bundle, extra, message):
    assert main(["predict", str(tiny_bundle), str(svs), "-o", str(tmp_path / "x.zarr"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x.zarr").exists()


def test_the_shipped_model_needs_a_background_class(tmp_path, capsys, svs):
    assert main(["predict", "default", str(svs), "-o", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert "--background-class is required" in capsys.readouterr().err


def test_bad_files_are_one_line(tmp_path, capsys, svs, tiny_bundle):
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["predict", str(tiny_bundle), str(fake), "-o", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert "not a slide format" in capsys.readouterr().err
    cut = tmp_path / "cut.svs"
    cut.write_bytes(svs.read_bytes()[:40000])
    assert main(["predict", str(tiny_bundle), str(cut), "-o", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert str(cut) in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "tall.png"), np.zeros((80, 60), np.uint8))
    assert main(["predict", str(tiny_bundle), str(svs), "-o", str(tmp_path / "x.zarr"), "--quiet", "--tissue", str(tmp_path / "tall.png")]) == 2
    assert "the mask must cover the whole slide" in capsys.readouterr().err


def test_slide_options_on_a_plain_image_are_refused(tmp_path, capsys, tiny_bundle):
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((40, 40), np.uint8))
    assert main(["predict", str(tiny_bundle), str(tmp_path / "small.png"), "-o", str(tmp_path / "m.png"), "--mpp", "0.5"]) == 2
    assert "--mpp: for whole-slide images only" in capsys.readouterr().err
