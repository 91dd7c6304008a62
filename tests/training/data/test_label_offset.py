"""Label offsets under flips and turns (training/data/label_offset.py): the vector algebra, the
per-view corrections of test-time augmentation, the bilinear move, and what correction buys on
real ISBI slices with the shipped model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from service.cli import main
from training.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from training.data.dataset import ISBI_TRAIN, isbi2012
from training.data.label_offset import (
    bundle_label_offset,
    check_label_offset,
    correction_reach,
    dihedral_vector,
    measure_label_offset,
    shift_maps,
    view_correction,
)
from training.inference.predictor import Predictor
from training.inference.tta import TTA_MODES

D4 = TTA_MODES["d4"]


def test_dihedral_vectors():
    assert dihedral_vector((1.0, 2.0), False, False, 0) == (1.0, 2.0)
    assert dihedral_vector((1.0, 2.0), True, False, 0) == (1.0, -2.0)
    assert dihedral_vector((1.0, 2.0), False, True, 0) == (-1.0, 2.0)
    assert dihedral_vector((1.0, 0.0), False, False, 1) == (0.0, 1.0)  # np.rot90: down becomes right
    assert dihedral_vector((1.0, 2.0), False, False, 4) == (1.0, 2.0)


@pytest.mark.parametrize(("turns", "flip"), D4)
@pytest.mark.parametrize("offset", [(-1, 0), (2, -3)])
def test_view_correction_puts_a_views_labels_back(turns, flip, offset):
    """A 'model' that draws labels ``offset`` off what it sees, run on a view and un-viewed, lands
    exactly on the labels once moved by the view's correction (integer offsets: exact)."""
    structures = np.random.default_rng(0).random((12, 16)).astype(np.float32)
    labels = np.roll(structures, offset, axis=(0, 1))
    view = np.rot90(structures[:, ::-1] if flip else structures, turns)
    drawn = np.roll(view, offset, axis=(0, 1))
    back = np.rot90(drawn, -turns)
    back = back[:, ::-1] if flip else back
    correction = view_correction(offset, turns, flip)
    moved = shift_maps(torch.from_numpy(np.ascontiguousarray(back)), correction).numpy()
    np.testing.assert_array_equal(moved, labels)
    if (turns, flip) == (0, False):
        assert correction == (0, 0)


def test_shift_maps_is_bilinear():
    impulse = torch.zeros(1, 10, 10)
    impulse[0, 5, 5] = 1.0
    moved = shift_maps(impulse, (0.25, -1.5))[0]
    expected = torch.zeros(10, 10)
    expected[5, 3] = expected[5, 4] = 0.75 * 0.5  # out[y, x] = in[y - 0.25, x + 1.5]
    expected[6, 3] = expected[6, 4] = 0.25 * 0.5
    torch.testing.assert_close(moved, expected)
    assert torch.equal(shift_maps(impulse, (0.0, 0.0)), impulse)


def test_reach_and_offsets_from_bundles():
    assert correction_reach([view_correction((-0.6, -0.2), t, f) for t, f in D4]) == 2
    assert correction_reach([]) == 0
    assert bundle_label_offset(None) == (0.0, 0.0)
    assert bundle_label_offset({"config": {"data": {"label_offset": [-0.6, -0.2]}}}) == (-0.6, -0.2)
    with pytest.raises(ValueError, match="within"):
        check_label_offset((0.0, 5.0))
    with pytest.raises(ValueError, match=r"label_offset must be \[dy, dx\]"):
        check_label_offset((1.0,))


def test_corrected_tta_beats_uncorrected_on_isbi_hold_out():
    """The shipped model learned ISBI's 0.6 px offset: its flipped views, moved back, make fewer
    pixel errors on hold-out slices than the same views averaged as they come."""
    shipped = load_bundle(DEFAULT_BUNDLE)
    assert any(bundle_label_offset(shipped.info.provenance))
    centred = copy.deepcopy(shipped.info)
    centred.provenance["config"]["data"]["label_offset"] = [0.0, 0.0]
    corrected = Predictor(shipped, device="cpu", tta="flips")
    uncorrected = Predictor(Bundle(model=shipped.model, info=centred), device="cpu", tta="flips")
    examples = isbi2012(["25", "27"]).load_all()

    def pixel_error(predictor: Predictor) -> float:
        return float(np.mean([np.mean(predictor.predict(e.image).labels != e.target) for e in examples]))

    assert pixel_error(corrected) < pixel_error(uncorrected) - 0.001


def structures(seed: int, shape=(160, 170)) -> np.ndarray:
    """A smooth random field: its low values are the 'structures' masks trace."""
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0)


@pytest.mark.parametrize("offset", [(0.5, -0.25), (-1.3, 0.0), (0.0, 2.4)])
def test_measure_finds_a_known_offset(offset):
    pairs = []
    for seed in range(3):
        field = structures(seed)
        image = (field - field.min()) / np.ptp(field) * 255
        mask = ndimage.shift(field, offset, order=3, mode="mirror") < np.quantile(field, 0.25)
        pairs.append((image, mask))
    pooled, each = measure_label_offset(pairs)
    assert pooled == pytest.approx(offset, abs=0.15)
    assert all(o == pytest.approx(offset, abs=0.25) for o in each)


def test_measure_refuses_masks_that_do_not_trace_the_images():
    field = structures(0)
    with pytest.raises(ValueError, match="at the edge of the \\+-4 px searched"):
        measure_label_offset([(field, np.roll(field < 0, (7, 0), axis=(0, 1)))])
    with pytest.raises(ValueError, match="no images"):
        measure_label_offset([])
    with pytest.raises(ValueError, match="differ in size"):
        measure_label_offset([(field, field[:-1] < 0)])


def test_isbi_labels_sit_above_and_left_of_the_membranes():
    """What the recipe's ``data.label_offset: [-0.6, -0.2]`` comes from (slices 0-24)."""
    examples = isbi2012(ISBI_TRAIN).load_all()
    pooled, each = measure_label_offset([(e.image, e.target == 0) for e in examples])
    assert pooled == pytest.approx((-0.6, -0.15), abs=0.05)
    assert all(-0.85 < dy < -0.35 and -0.45 < dx < 0.05 for dy, dx in each)


def test_label_offset_command(tmp_path, capsys):
    for kind in ("image", "mask"):
        (tmp_path / kind).mkdir()

    for seed in range(2):
        field = structures(seed)
        image = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
        mask = (ndimage.shift(field, (1.0, 0.0), order=3, mode="mirror") < np.quantile(field, 0.25)).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "image" / f"{seed}.png")
        Image.fromarray(mask * 255).save(tmp_path / "mask" / f"{seed}.png")
    folders = ["--images", str(tmp_path / "image"), "--masks", str(tmp_path / "mask")]
    assert main(["label-offset", *folders, "--per-image"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["label_offset"] == pytest.approx([1.0, 0.0], abs=0.15)
    assert result["images"] == 2 and set(result["per_image"]) == {"0", "1"}
    assert result["config"].startswith("data.label_offset: [")
    assert main(["label-offset", *folders, "--class", "nope"]) == 2
    assert "--class 'nope' is not one of the classes" in capsys.readouterr().err
    assert main(["label-offset", "--images", str(tmp_path / "image")]) == 2
    assert "give both --images and --masks" in capsys.readouterr().err
