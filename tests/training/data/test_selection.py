"""Selections: numbers are stems, stem ranges follow the folder's order, positions are written pos:."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.paths import ROOT
from training.data.dataset import ISBI_HOLDOUT, ISBI_TRAIN, DatasetError, SegmentationFolder, isbi2012
from training.data.selection import SelectionError, parse_positions, select
from training.loop.config import load_config
from training.loop.splits import select_folders

CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def stems_21_to_40(tmp_path_factory: pytest.TempPathFactory) -> SegmentationFolder:
    """A folder whose stems are 21..40 (positions 0..19), 4x4 binary masks."""
    root = tmp_path_factory.mktemp("stems")
    for kind in ("images", "masks"):
        (root / kind).mkdir()
    for stem in range(21, 41):
        Image.fromarray(np.full((4, 4), stem, np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(root / "masks" / f"{stem}.png")
    return SegmentationFolder(root / "images", root / "masks")


def test_numbers_are_stems_not_positions(stems_21_to_40: SegmentationFolder) -> None:
    data = stems_21_to_40
    assert data.select("37-40").names == ["37", "38", "39", "40"]
    assert data.select(["37-40"]).names == ["37", "38", "39", "40"]
    assert data.select("25").names == ["25"]
    assert data.select("21,40, 30").names == ["21", "40", "30"]
    # The image behind stem 37 is the one written for it (not position 37, which does not exist).
    assert int(data.select("37").load(0).image[0, 0]) == 37


def test_config_selection_of_stems(stems_21_to_40: SegmentationFolder, tmp_path: Path) -> None:
    config = load_config(None, [f"data.images={stems_21_to_40.images_dir}", f"data.masks={stems_21_to_40.masks_dir}",
                                "data.val=[37-40]", "run.epochs=1"])
    train, val = select_folders(config.data)
    assert val.names == ["37", "38", "39", "40"]
    assert train.names == [str(s) for s in range(21, 37)]
    config = load_config(None, [f"data.images={stems_21_to_40.images_dir}", f"data.masks={stems_21_to_40.masks_dir}",
                                "data.val=[pos:0-1]", "data.train=[23-24, pos:4]", "run.epochs=1"])
    train, val = select_folders(config.data)
    assert val.names == ["21", "22"] and train.names == ["23", "24", "25"]


def test_explicit_positions(stems_21_to_40: SegmentationFolder) -> None:
    data = stems_21_to_40
    assert data.select("pos:0-3").names == ["21", "22", "23", "24"]
    assert data.select("pos:19").names == ["40"]
    # pos: applies to every item after it; stems may come before it.
    assert data.select("30, pos:0-1,19").names == ["30", "21", "22", "40"]
    assert data.select([0, 19]).names == ["21", "40"]  # Python ints are positions
    assert parse_positions("0-2, 5") == [0, 1, 2, 5]


def test_stem_ranges_follow_the_folder_order(tmp_path: Path) -> None:
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    for stem in ("2", "4", "10", "10a", "11", "slice-3"):
        for kind in ("images", "masks"):
            Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / kind / f"{stem}.png")
    data = SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    assert data.names == ["2", "4", "10", "10a", "11", "slice-3"]
    assert data.select("4-11").names == ["4", "10", "10a", "11"]  # gaps and non-numeric stems between
    assert data.select("slice-3").names == ["slice-3"]  # a stem with a hyphen is that stem


def test_the_isbi_recipe_selects_the_same_slices() -> None:
    config = load_config(CONFIGS / "isbi2012.yaml")
    train, val = select_folders(config.data)
    assert train.names == [str(i) for i in ISBI_TRAIN]
    assert val.names == [str(i) for i in ISBI_HOLDOUT]
    assert isbi2012("25-29").names == isbi2012(ISBI_HOLDOUT).names


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("0-4", r"selection range '0-4': '0' is not a stem in .*images \(stems: 21 \.\. 40; positions are written 'pos:0-4'\)"),
        ("37-41", r"selection range '37-41': '41' is not a stem"),
        ("7", r"selection names '7', which is not a stem in .*images \(stems: 21 \.\. 40; positions are written 'pos:7'\)"),
        ("img_3", r"selection names 'img_3', which is not a stem in .*images$"),
        ("40-37", r"selection range '40-37' runs backwards"),
        ("pos:20", r"selection position 20 is outside 0\.\.19"),
        ("pos:3-1", r"position range '3-1' runs backwards"),
        ("pos:0-2,x", r"cannot read positions '0-2,x': after 'pos:' give positions and ranges"),
        ("25 pos:1", r"separate 'pos:' from the stems before it by a comma"),
        ("25, pos:4", r"selection lists the pair '25' twice"),
        ([-1], r"selection position -1 is outside 0\.\.19"),
    ],
)
def test_errors_name_what_was_not_found(stems_21_to_40: SegmentationFolder, items, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        stems_21_to_40.select(items)


def test_a_file_lists_one_item_per_line(stems_21_to_40: SegmentationFolder, tmp_path: Path) -> None:
    listing = tmp_path / "val.txt"
    listing.write_text("40\n21-22\n\npos:2\n")
    assert stems_21_to_40.select(listing).names == ["40", "21", "22", "23"]
    assert stems_21_to_40.select(str(listing)).names == ["40", "21", "22", "23"]


def test_select_works_on_stems_alone() -> None:
    assert select(["a", "b", "c"], "c,pos:0") == [2, 0]
    with pytest.raises(SelectionError, match="'d', which is not a stem in the folder"):
        select(["a", "b", "c"], "d")
