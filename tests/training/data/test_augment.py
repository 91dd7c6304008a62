"""Augmentation: mirrored borders, label sets kept, the paper's grid warp, configuration, and seeding
of DataLoader workers (albumentations 2.0.8 gives every worker the same random state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from training.data import Example, isbi2012
from training.data.augment import GridElastic, build_augmentation, grid_displacement, warp_reach
from training.data.augment_config import DEFAULT_AUGMENTATION, read_config
from training.data.patches import PatchDataset
from training.geometry import TileGeometry
from training.loop.seeding import worker_init_fn

STRONG_WARPS = {
    "affine": {"p": 1.0, "scale": [0.5, 0.6], "rotate": [40, 50]},
    "elastic": {"p": 1.0, "sigma": 25.0},
    "flip": {"p": 1.0},
    "rotate90": {"p": 1.0},
}
GEOMETRY_ONLY = {name: False for name in ("brightness", "contrast", "gamma", "noise", "blur")}


def test_borders_are_mirrored_not_constant():
    """A flat image stays flat under any warp only if the border is mirrored, not filled with 0."""
    aug = build_augmentation({**STRONG_WARPS, **GEOMETRY_ONLY}, seed=0)
    image = np.full((64, 48), 0.7, np.float32)
    mask = np.full((64, 48), 3, np.uint8)
    weight = np.full((64, 48), 2.5, np.float32)
    for _ in range(5):
        out_image, out_mask, out_weight = aug(image, mask, weight)
        np.testing.assert_allclose(out_image, 0.7, atol=1e-6)
        assert (out_mask == 3).all() and (out_weight == 2.5).all()


def test_mask_and_weights_stay_in_their_value_sets():
    rng = np.random.default_rng(0)
    aug = build_augmentation(STRONG_WARPS, seed=1)
    mask = rng.choice(np.array([0, 3, 7], np.uint8), size=(60, 60))
    weight = rng.choice(np.array([0.0, 1.5, 11.0], np.float32), size=(60, 60))
    image = rng.random((60, 60)).astype(np.float32)
    for _ in range(5):
        out_image, out_mask, out_weight = aug(image, mask, weight)
        assert set(np.unique(out_mask)) <= {0, 3, 7}
        assert set(np.unique(out_weight)) <= {0.0, 1.5, 11.0}
        assert out_image.dtype == np.float32 and out_mask.dtype == np.uint8
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0


def test_labels_move_with_the_image():
    """Geometry applies jointly: where the image is bright the warped mask is 1."""
    image = np.zeros((80, 80), np.float32)
    image[20:50, 30:60] = 1.0
    mask = (image > 0).astype(np.uint8)
    aug = build_augmentation({**STRONG_WARPS, **GEOMETRY_ONLY}, seed=2)
    for _ in range(4):
        out_image, out_mask, _ = aug(image, mask, None)
        assert out_mask.any()
        np.testing.assert_array_equal(out_mask[out_image > 0.99], 1)
        np.testing.assert_array_equal(out_mask[out_image < 0.01], 0)


def test_fixed_seed_reproduces_and_seeds_differ():
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    first = [build_augmentation(seed=5)(image, mask)[0] for _ in range(1)][0]
    again = build_augmentation(seed=5)(image, mask)[0]
    other = build_augmentation(seed=6)(image, mask)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_grid_warp_interpolates_the_coarse_grid_exactly():
    coarse = np.arange(18, dtype=np.float64).reshape(3, 3, 2) - 9
    dy, dx = grid_displacement((41, 61), coarse)
    for (gy, gx), (y, x) in {(0, 0): (0, 0), (1, 1): (20, 30), (2, 2): (40, 60), (0, 2): (0, 60)}.items():
        assert dy[y, x] == pytest.approx(coarse[gy, gx, 0], abs=1e-4)
        assert dx[y, x] == pytest.approx(coarse[gy, gx, 1], abs=1e-4)
    # smooth: neighbouring displacements differ by far less than the node spacing's change
    assert np.abs(np.diff(dx, axis=1)).max() < 1.0


def test_grid_warp_displacements_have_sigma_10_at_the_nodes():
    warp = GridElastic(grid=3, sigma=10.0, p=1.0)
    warp.set_random_seed(0)
    shifts = []
    for _ in range(400):
        maps = warp.get_params_dependent_on_data({"shape": (21, 21)}, {})
        shifts.append([maps["map_x"][10, 10] - 10, maps["map_y"][0, 20] - 0])
    assert np.std(shifts, axis=0) == pytest.approx([10.0, 10.0], rel=0.12)


def test_config_merging_and_errors(tmp_path):
    config = read_config({"elastic": {"sigma": 4}, "noise": False})
    assert config["elastic"] == {"p": 0.5, "grid": 3, "sigma": 4}
    assert "noise" not in config and set(config) == set(DEFAULT_AUGMENTATION) - {"noise"}
    assert read_config("none") == {}
    path = tmp_path / "aug.yaml"
    path.write_text("flip: {p: 0.9}\nblur: false\n")
    assert read_config(path)["flip"] == {"p": 0.9, "axes": "both"} and "blur" not in read_config(str(path))
    assert read_config({"gamma": {"p": 0}}).get("gamma") is None
    with pytest.raises(ValueError, match="unknown augmentation 'zoom'"):
        read_config({"zoom": {}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['alpha'\]"):
        read_config({"elastic": {"alpha": 3}})
    with pytest.raises(ValueError, match="grid must be >= 2"):
        build_augmentation({"elastic": {"grid": 1}})
    with pytest.raises(ValueError, match="axes must be one of both, horizontal, vertical, not 'diagonal'"):
        build_augmentation({"flip": {"axes": "diagonal"}})
    with pytest.raises(ValueError, match="runs backwards"):
        build_augmentation({"affine": {"rotate": [10, -10]}})
    image = np.zeros((8, 8), np.float32)
    assert build_augmentation("none")(image, image.astype(np.uint8))[0] is image


@pytest.mark.parametrize("axes, flipped", [("horizontal", np.s_[:, ::-1]), ("vertical", np.s_[::-1, :])])
def test_flips_can_keep_to_one_axis(axes, flipped):
    """``flip.axes`` restricts flips to one axis (for labels drawn off-centre, e.g. ISBI 2012's)."""
    aug = build_augmentation({"flip": {"p": 1.0, "axes": axes}, "rotate90": False, "affine": False,
                              "elastic": False, **GEOMETRY_ONLY}, seed=0)
    image = np.arange(20, dtype=np.float32).reshape(4, 5) / 20
    mask = np.arange(20, dtype=np.uint8).reshape(4, 5)
    for _ in range(3):
        out_image, out_mask, _ = aug(image, mask)
        np.testing.assert_array_equal(out_image, image[flipped])
        np.testing.assert_array_equal(out_mask, mask[flipped])


@pytest.mark.parametrize("offset", [(-1.0, 0.0), (0.0, 2.0), (1.0, -1.0)])
def test_flips_and_turns_keep_an_off_centre_labelling(offset):
    """Labels drawn ``offset`` px off their structures stay exactly that far off after every flip
    and turn (integer offsets: the image's correcting move is exact)."""
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.random((72, 72)), 3)
    structure = field > np.median(field)
    dy, dx = int(offset[0]), int(offset[1])
    labels = np.roll(structure, (dy, dx), axis=(0, 1)).astype(np.uint8)  # label(p) = structure(p - offset)
    image = structure.astype(np.float32)
    aug = build_augmentation({"flip": {"p": 0.5}, "rotate90": {"p": 1.0}, "affine": False, "elastic": False,
                              **GEOMETRY_ONLY}, seed=3, label_offset=offset)
    seen, inner = set(), np.s_[4:-4, 4:-4]
    for _ in range(40):
        out_image, out_labels, _ = aug(image, labels)
        expected = np.roll(out_image > 0.5, (dy, dx), axis=(0, 1))
        np.testing.assert_array_equal(out_labels[inner], expected[inner])
        seen.add(out_labels.tobytes())
    assert len(seen) == 8  # all eight flips/turns happened
    # Without the offset, a vertical flip turns "1 px above" into "1 px below":
    plain = build_augmentation({"flip": {"p": 1.0, "axes": "vertical"}, "rotate90": False, "affine": False,
                                "elastic": False, **GEOMETRY_ONLY}, seed=0)
    out_image, out_labels, _ = plain(image, labels)
    if dy:
        assert not np.array_equal(out_labels[inner], np.roll(out_image > 0.5, (dy, dx), axis=(0, 1))[inner])


def test_label_offset_errors():
    with pytest.raises(ValueError, match=r"label_offset must be \[dy, dx\]"):
        build_augmentation(None, label_offset=(1.0,))
    with pytest.raises(ValueError, match="within"):
        build_augmentation(None, label_offset=(0.0, 5.0))


def test_warp_reach_by_hand():
    assert warp_reach({}, 100) == 0
    assert warp_reach({"elastic": {"sigma": 10.0}}, 100) == 30
    # 45 degrees at scale 1: corners reach 50 * (sqrt 2 - 1) = 20.7 px further
    assert warp_reach({"affine": {"scale": [1, 1], "rotate": [45, 45]}}, 100) == 21


def _isbi_patches(seed: int = 0) -> PatchDataset:
    """A 64x64 ISBI crop sampled whole (same padding, crop = image): the window never moves, so
    any difference between samples is the augmentation's."""
    full = isbi2012().load(0)
    example = [Example("0", full.image[:64, :64], full.target[:64, :64])]
    return PatchDataset(example, TileGeometry("same", 2), input_size=64, num_classes=2,
                        augmentation=build_augmentation(seed=seed), samples_per_epoch=4, seed=seed)


def _batches(dataset: PatchDataset, seed: int, init=worker_init_fn) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=init, multiprocessing_context="fork",
                        timeout=120)  # a hung worker fails the test instead of blocking the suite
    return [batch[0] for batch in loader]


def test_workers_differ_and_a_fixed_seed_reproduces_a_run():
    dataset = _isbi_patches()
    assert {dataset.window_start(dataset.images[0]) for _ in range(20)} == {(0, 0)}
    run = _batches(dataset, seed=7)
    # items 0, 2 come from worker 0, items 1, 3 from worker 1
    assert not torch.equal(run[0], run[1]) and not torch.equal(run[2], run[3])
    again = _batches(dataset, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(run, again))
    other = _batches(dataset, seed=8)
    assert not torch.equal(run[0], other[0])


def test_without_worker_seeding_workers_repeat_each_other():
    """The upstream behaviour the worker_init_fn exists for (albumentations 2.0.8)."""
    run = _batches(_isbi_patches(), seed=7, init=None)
    assert torch.equal(run[0], run[1]) and torch.equal(run[2], run[3])
