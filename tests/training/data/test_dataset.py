"""Datasets on disk: pairing by stem, formats, label specs, splits, and bad data named by file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from training.data.dataset import (
    IGNORE_INDEX,
    ISBI_HOLDOUT,
    ISBI_TRAIN,
    DatasetError,
    LabelSpec,
    SegmentationFolder,
    isbi2012,
)
from training.data.selection import parse_positions


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, image_suffix: str = ".png",
               mask_suffix: str = ".png") -> None:
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for folder, pixels, suffix in (("images", image, image_suffix), ("masks", mask, mask_suffix)):
        path = root / folder / f"{stem}{suffix}"
        if suffix in (".tif", ".tiff"):
            tifffile.imwrite(path, pixels)
        else:
            Image.fromarray(pixels).save(path)


def folder(root: Path, **kwargs) -> SegmentationFolder:
    return SegmentationFolder(root / "images", root / "masks", **kwargs)


def test_isbi_ships_classes_and_split():
    data = isbi2012()
    assert len(data) == 30
    assert data.names == [str(i) for i in range(30)]
    assert data.classes == ("membrane", "cell")
    assert data.labels.values == (0, 255) and data.labels.foreground == (0,)
    example = data.load(3)
    assert example.image.shape == (512, 512) and example.image.dtype == np.uint8
    raw = np.asarray(Image.open(data.pairs[3].mask))
    np.testing.assert_array_equal(example.target, (raw == 255).astype(np.int64))
    assert isbi2012(ISBI_TRAIN).names == [str(i) for i in range(25)]
    assert isbi2012(ISBI_HOLDOUT).names == ["25", "26", "27", "28", "29"]
    assert isbi2012("25-29").names == isbi2012(ISBI_HOLDOUT).names


def test_mixed_formats_sizes_and_depths(tmp_path):
    rng = np.random.default_rng(0)
    write_pair(tmp_path, "a", rng.integers(0, 255, (20, 30), dtype=np.uint8),
               np.zeros((20, 30), np.uint8))
    write_pair(tmp_path, "b", rng.integers(0, 65535, (17, 9), dtype=np.uint16),
               np.full((17, 9), 2, np.uint8), image_suffix=".tif")
    write_pair(tmp_path, "c", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
               np.ones((8, 8), np.uint8), image_suffix=".jpg")
    data = folder(tmp_path)
    assert data.classes == ("class_0", "class_1", "class_2")
    examples = data.load_all()
    assert [e.image.shape for e in examples] == [(20, 30, 3), (17, 9, 3), (8, 8, 3)]
    assert examples[1].image.dtype == np.uint16
    np.testing.assert_array_equal(examples[0].image[..., 0], examples[0].image[..., 2])
    assert examples[1].target[0, 0] == 2 and examples[2].target.dtype == np.int64


def test_binary_inference_and_ignore(tmp_path):
    mask = np.array([[0, 255], [7, 255]], np.uint8)
    write_pair(tmp_path, "x", np.zeros((2, 2), np.uint8), mask)
    data = folder(tmp_path, ignore=7)
    assert data.classes == ("background", "foreground")
    np.testing.assert_array_equal(data.load(0).target, [[0, 1], [IGNORE_INDEX, 1]])


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_class_file_options(tmp_path, suffix):
    write_pair(tmp_path, "x", np.zeros((2, 3), np.uint8), np.array([[10, 20, 30], [99, 30, 10]], np.uint8))
    spec = {"classes": {"30": "c", "10": "a", "20": "b"}, "ignore": 99, "foreground": ["c"]}
    text = json.dumps(spec)  # JSON is valid YAML
    (tmp_path / "masks" / f"classes.{suffix}").write_text(text)
    data = folder(tmp_path)
    assert data.classes == ("a", "b", "c") and data.labels.foreground == (2,)
    np.testing.assert_array_equal(data.load(0).target, [[0, 1, 2], [IGNORE_INDEX, 2, 0]])


def test_plain_mapping_beside_masks(tmp_path):
    write_pair(tmp_path, "x", np.zeros((1, 2), np.uint8), np.array([[0, 1]], np.uint8))
    (tmp_path / "classes.yaml").write_text("0: sky\n1: land\n")
    assert folder(tmp_path).classes == ("sky", "land")


def test_unknown_label_value_names_file(tmp_path):
    write_pair(tmp_path, "ok", np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    write_pair(tmp_path, "bad", np.zeros((2, 2), np.uint8), np.array([[0, 3], [5, 0]], np.uint8))
    data = folder(tmp_path, labels=LabelSpec(("bg", "fg"), (0, 1)))
    with pytest.raises(DatasetError, match=r"bad\.png.*\[3, 5\]"):
        data.load(data.names.index("bad"))


def test_missing_partner_names_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(DatasetError, match=r"lonely\.png: no mask"):
        folder(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    with pytest.raises(DatasetError, match=r"orphan\.png: no image"):
        folder(tmp_path)


def test_size_mismatch_names_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 5), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png: mask is 4x4 but image a\.png is 5x4"):
        folder(tmp_path, labels=LabelSpec(("bg", "fg"), (0, 1))).load(0)


def test_unreadable_file_names_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match=r"images/a\.png"):
        folder(tmp_path).load(0)


def test_colour_mask_refused(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8), np.dstack([np.eye(4, dtype=np.uint8) * 9] * 2 +
                                                                    [np.zeros((4, 4), np.uint8)]))
    with pytest.raises(DatasetError, match=r"masks/a\.png: a mask must be one channel"):
        folder(tmp_path)


def test_selection_by_names_file_and_errors(tmp_path):
    data = isbi2012()
    listing = tmp_path / "split.txt"
    listing.write_text("7\n3\n")
    assert data.select(listing).names == ["7", "3"]
    assert data.select(["29", 0]).names == ["29", "0"]
    assert parse_positions("0-2, 5") == [0, 1, 2, 5]
    with pytest.raises(DatasetError, match="outside 0..29"):
        data.select([30])
    with pytest.raises(DatasetError, match="'nope'"):
        data.select(["nope"])
    with pytest.raises(DatasetError, match="twice"):
        data.select("1,1")


def test_bad_class_files(tmp_path):
    (tmp_path / "c.yaml").write_text("classes: {0: a, 1: b}\nforeground: [z]\n")
    with pytest.raises(DatasetError, match=r"c\.yaml: foreground class\(es\) \['z'\]"):
        LabelSpec.read(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("classes: {0: a, 1: b}\nforeground: b\n")
    assert LabelSpec.read(tmp_path / "e.yaml").foreground == (1,)
    (tmp_path / "d.yaml").write_text("0: only\n")
    with pytest.raises(DatasetError, match="at least 2 classes"):
        LabelSpec.read(tmp_path / "d.yaml")


def test_ambiguous_mask_values_ask_for_a_classes_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((2, 2), np.uint8), np.array([[0, 1], [2, 255]], np.uint8))
    with pytest.raises(DatasetError, match=r"values \[0, 1, 2, 255\].*add a classes.yaml"):
        folder(tmp_path)
    assert folder(tmp_path, ignore=255).classes == ("class_0", "class_1", "class_2")
