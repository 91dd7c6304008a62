"""Label offsets under flips and turns (training/label_offset.py): the vector algebra, the
per-view corrections of test-time augmentation, the bilinear move, and what correction buys on
real ISBI slices with the shipped model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from training.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from training.data.dataset import isbi2012
from training.label_offset import (
    bundle_label_offset,
    check_label_offset,
    correction_reach,
    dihedral_vector,
    shift_maps,
    view_correction,
)
from training.predictor import TTA_MODES, Predictor

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
