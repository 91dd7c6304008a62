"""Overlap-tile training patches: exact windows, mirrored context identical to the tiler's, per-image
normalisation, ignored outside pixels, foreground oversampling, warps with real context."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import IGNORE_INDEX, Example, isbi2012
from training.data.augment import build_augmentation
from training.data.patches import UNIFORM_WEIGHTS, PatchDataset, WeightMapConfig, dataset_normalization
from training.data.weightmap import class_balance_weights, unet_weight_map
from training.geometry import TileGeometry
from training.normalization import Normalization, image_statistics

VALID = TileGeometry("valid", 2)  # margin 20 px, stride 4
SAME = TileGeometry("same", 3)


@pytest.fixture(scope="module")
def isbi_example() -> Example:
    full = isbi2012().load(4)
    return Example(full.name, full.image[:150, :170], full.target[:150, :170])


def test_valid_window_at_a_corner_is_the_mirrored_image(isbi_example):
    margin = VALID.margin
    size = VALID.min_input + 4 * VALID.stride
    data = PatchDataset([isbi_example], VALID, size, 2)
    out = data.output_size
    assert size - out == 2 * margin and margin > 0
    y0, x0 = 0, 170 - out  # top-right corner: context mirrored above and to the right
    network_input, target, weight = data.sample(data.images[0], y0, x0)
    # independent reference: numpy's reflect pad of the whole image, then a plain crop
    padded = np.pad(isbi_example.image, margin, mode="reflect")
    raw = padded[y0 : y0 + size, x0 : x0 + size]
    mean, std = image_statistics(isbi_example.image)
    expected = (raw.astype(np.float32) / 255 - np.float32(mean[0])) / np.float32(std[0])
    assert network_input.shape == (1, size, size)
    np.testing.assert_allclose(network_input[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(target.numpy(), isbi_example.target[y0 : y0 + out, x0 : x0 + out])
    weights = class_balance_weights(isbi_example.target, 2)
    full_weight = unet_weight_map(isbi_example.target, weights)
    np.testing.assert_allclose(weight.numpy(), full_weight[y0 : y0 + out, x0 : x0 + out])


def test_normalisation_is_the_images_not_the_patches(isbi_example):
    data = PatchDataset([isbi_example], SAME, 32, 2, weights=UNIFORM_WEIGHTS)
    network_input, _, _ = data.sample(data.images[0], 40, 50)
    mean, std = image_statistics(isbi_example.image)
    crop = isbi_example.image[40:72, 50:82].astype(np.float32) / 255
    np.testing.assert_allclose(network_input[0].numpy(), (crop - mean[0]) / std[0], rtol=1e-5, atol=1e-5)
    assert abs(float(network_input.mean())) > 1e-3 or abs(float(network_input.std()) - 1) > 1e-3


def test_same_padding_crop_and_fixed_normalisation(isbi_example):
    fixed = Normalization("fixed", (0.5,), (0.25,))
    data = PatchDataset([isbi_example], SAME, 32, 2, normalization=fixed, weights=UNIFORM_WEIGHTS)
    network_input, target, weight = data.sample(data.images[0], 150 - 32, 0)
    crop = isbi_example.image[118:150, :32].astype(np.float32) / 255
    np.testing.assert_allclose(network_input[0].numpy(), (crop - 0.5) / 0.25, rtol=1e-6)
    np.testing.assert_array_equal(target.numpy(), isbi_example.target[118:150, :32])
    np.testing.assert_array_equal(weight.numpy(), 1.0)


def test_image_smaller_than_window_mirrors_input_and_ignores_outside_target():
    image = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12)
    target = (image % 3 == 0).astype(np.int64)
    target[0, 0] = IGNORE_INDEX
    data = PatchDataset([Example("tiny", image, target)], SAME, 16, 2, weights=UNIFORM_WEIGHTS)
    corners = {data.window_start(data.images[0]) for _ in range(200)}
    assert {y for y, _ in corners} == set(range(-6, 1)) and {x for _, x in corners} == set(range(-4, 1))
    network_input, out_target, weight = data.sample(data.images[0], -3, -2)
    mean, std = image_statistics(image)
    mirrored = np.pad(image, ((3, 3), (2, 2)), mode="reflect").astype(np.float32) / 255
    np.testing.assert_allclose(network_input[0].numpy(), (mirrored - mean[0]) / std[0], rtol=1e-5, atol=1e-5)
    inside = out_target[3:13, 2:14].numpy()
    np.testing.assert_array_equal(inside, target)
    outside = np.ones((16, 16), bool)
    outside[3:13, 2:14] = False
    assert (out_target.numpy()[outside] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(weight.numpy() == 0, out_target.numpy() == IGNORE_INDEX)


def test_windows_reach_every_border(isbi_example):
    data = PatchDataset([isbi_example], SAME, 64, 2, weights=UNIFORM_WEIGHTS, foreground_share=0.0)
    starts = np.array([data.window_start(data.images[0]) for _ in range(3000)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 150 - 64
    assert starts[:, 1].min() == 0 and starts[:, 1].max() == 170 - 64


def test_foreground_oversampling_centres_on_rare_class():
    image = np.zeros((200, 200), np.uint8)
    target = np.zeros((200, 200), np.int64)
    target[150:153, 20:23] = 1  # 9 foreground pixels in 40000
    example = [Example("rare", image, target)]

    def hits(share: float) -> int:
        data = PatchDataset(example, SAME, 16, 2, weights=UNIFORM_WEIGHTS, foreground_share=share,
                            samples_per_epoch=200, seed=3)
        return sum(int((data[i][1] == 1).any()) for i in range(len(data)))

    assert hits(1.0) == 200
    assert hits(0.0) < 30
    assert 40 < hits(1 / 3) < 100  # about 200 / 3


def test_foreground_classes_choose_the_class():
    target = np.zeros((100, 100), np.int64)
    target[10, 10] = 2
    target[90, 90] = 1
    data = PatchDataset([Example("x", np.zeros((100, 100), np.uint8), target)], SAME, 8, 3,
                        weights=UNIFORM_WEIGHTS, foreground_classes=[2], foreground_share=1.0)
    assert all(data.window_start(data.images[0]) == (6, 6) for _ in range(5))


def test_items_types_shapes_and_epoch_length(isbi_example):
    data = PatchDataset([isbi_example, isbi_example], VALID, VALID.min_input + 8, 2,
                        augmentation=build_augmentation(seed=0))
    out = data.output_size
    assert len(data) == int(np.ceil(2 * 150 * 170 / out**2))
    network_input, target, weight = data[0]
    side = out + 2 * VALID.margin
    assert str(network_input.dtype) == "torch.float32" and network_input.shape == (1, side, side)
    assert str(target.dtype) == "torch.int64" and target.shape == (out, out)
    assert str(weight.dtype) == "torch.float32" and weight.shape == (out, out)
    assert set(np.unique(target.numpy())) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(IndexError):
        data[len(data)]


def test_warps_pull_real_context_not_the_windows_own_reflection():
    """A linear ramp rotated about any centre is still a plane: the augmented input is exactly
    planar only if the warp sampled real image context beyond the window (the reach)."""
    yy, xx = np.mgrid[:300, :300].astype(np.float32)
    ramp = (0.1 + 0.002 * xx + 0.001 * yy).astype(np.float32)
    example = [Example("ramp", ramp, np.zeros((300, 300), np.int64))]
    rotate = {"affine": {"p": 1.0, "scale": [0.9, 0.9], "rotate": [25, 25]}, "flip": False, "rotate90": False,
              "elastic": False, "brightness": False, "contrast": False, "gamma": False, "noise": False,
              "blur": False}
    fixed = Normalization("fixed", (0.0,), (1.0,))
    data = PatchDataset(example, VALID, VALID.min_input + 16, 2, normalization=fixed, weights=UNIFORM_WEIGHTS,
                        augmentation=build_augmentation(rotate, seed=0))
    assert data.augmentation.reach(data.input_size) > 0
    network_input = data.sample(data.images[0], 110, 120)[0][0].numpy()
    rows, cols = np.mgrid[: network_input.shape[0], : network_input.shape[1]]
    design = np.stack([np.ones(rows.size), rows.ravel(), cols.ravel()], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, network_input.ravel(), rcond=None)
    residual = network_input.ravel() - design @ coefficients
    assert np.abs(residual).max() < 1e-4
    # really rotated and scaled: the ramp's slopes (0.001 per row, 0.002 per column) changed
    assert abs(coefficients[1] - 0.001) > 5e-4 and abs(coefficients[2] - 0.002) > 1e-4


def test_dataset_normalization_pools_pixels():
    a = Example("a", np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int64))
    b = Example("b", np.full((2, 6), 255, np.uint8), np.zeros((2, 6), np.int64))
    norm = dataset_normalization([a, b])
    assert norm.mode == "fixed"
    assert norm.mean == pytest.approx((0.75,)) and norm.std == pytest.approx((np.sqrt(0.75 * 0.25),))


def test_weight_config_and_bad_arguments(isbi_example):
    fixed = WeightMapConfig(class_weights=(1.0, 3.0), w0=0.0)
    data = PatchDataset([isbi_example], SAME, 32, 2, weights=fixed)
    _, target, weight = data.sample(data.images[0], 0, 0)
    np.testing.assert_array_equal(weight.numpy(), np.where(target.numpy() == 1, 3.0, 1.0))
    with pytest.raises(ValueError, match="2 class weights for 3 classes"):
        PatchDataset([isbi_example], SAME, 32, 3, weights=fixed)
    with pytest.raises(ValueError, match="not valid"):
        PatchDataset([isbi_example], VALID, 61, 2)
    with pytest.raises(ValueError, match="no examples"):
        PatchDataset([], SAME, 32, 2)


def test_float_images_outside_unit_range_keep_their_normalised_values():
    rng = np.random.default_rng(0)
    image = (rng.random((40, 40)) * 3000 - 500).astype(np.float32)
    data = PatchDataset([Example("f", image, np.zeros((40, 40), np.int64))], SAME, 16, 2, weights=UNIFORM_WEIGHTS)
    stored = data.images[0].pixels
    assert stored.min() == 0.0 and stored.max() == pytest.approx(1.0)
    network_input = data.sample(data.images[0], 5, 7)[0][0].numpy()
    mean, std = image_statistics(image)
    expected = (image[5:21, 7:23] - mean[0]) / std[0]
    np.testing.assert_allclose(network_input, expected, rtol=1e-4, atol=1e-4)


def test_rgb_and_16_bit_images_through_the_augmented_pipeline():
    rng = np.random.default_rng(2)
    rgb = Example("rgb", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), rng.integers(0, 3, (70, 90)))
    deep = Example("deep", rng.integers(0, 65535, (50, 40, 3), dtype=np.uint16), rng.integers(0, 3, (50, 40)))
    data = PatchDataset([rgb, deep], VALID, VALID.min_input + 4, 3, augmentation=build_augmentation(seed=1),
                        samples_per_epoch=6)
    side, out = data.input_size, data.output_size
    for index in range(len(data)):
        network_input, target, weight = data[index]
        assert network_input.shape == (3, side, side) and np.isfinite(network_input.numpy()).all()
        assert target.shape == (out, out) and set(np.unique(target.numpy())) <= {0, 1, 2, IGNORE_INDEX}
        assert (weight.numpy()[target.numpy() == IGNORE_INDEX] == 0).all()


def test_augmentation_never_writes_into_the_stored_image():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    intensity = {name: {"p": 1.0} for name in ("brightness", "contrast", "gamma", "noise", "blur")}
    data = PatchDataset([Example("w", image, np.zeros((32, 32), np.int64))], SAME, 32, 2, weights=UNIFORM_WEIGHTS,
                        augmentation=build_augmentation({**intensity, "affine": False, "elastic": False}, seed=0),
                        samples_per_epoch=5)
    before = data.images[0].pixels.copy()
    for index in range(5):
        data[index]
    np.testing.assert_array_equal(data.images[0].pixels, before)
