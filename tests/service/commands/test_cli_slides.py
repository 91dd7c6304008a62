"""``tessera info SLIDE``: the levels, sizes, mpp and objective power of real slide files."""

from __future__ import annotations

import json

import pytest

from service.cli import main
from tests.support.slides import tissue_image, write_ome_tiff, write_svs


def test_info_of_an_svs(tmp_path, capsys):
    path = write_svs(tmp_path / "slide.svs", tissue_image(600, 800), mpp=0.25, magnification=40)
    assert main(["info", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["format"] == "aperio" and described["reader"] == "openslide"
    assert described["objective_power"] == 40.0 and described["mpp"] == {"x": 0.25, "y": 0.25}
    assert [(lv["width"], lv["height"]) for lv in described["levels"]] == [(800, 600), (200, 150), (50, 37)]
    assert [lv["mpp"] for lv in described["levels"]] == pytest.approx([0.25, 1.0, 4.0], rel=0.01)


def test_info_of_an_ome_tiff(tmp_path, capsys):
    path = write_ome_tiff(tmp_path / "slide.ome.tif", tissue_image(600, 800), mpp=0.5)
    assert main(["info", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["format"] == "ome-tiff" and described["levels"][1]["mpp"] == 2.0


def test_info_of_a_broken_slide_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.svs"
    path.write_bytes(b"GIF89a not a slide at all")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a slide format" in err and "\n" not in err
