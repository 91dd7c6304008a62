"""Optional Gaussian blending: exact where the model is, normalised at borders, band-bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.bundles import SMALL_SMP, TINY_UNET, make_bundle
from tests.support.exact import assert_exact
from tests.support.images import random_image
from training.geometry import TileGeometry
from training.inference.blending import WEIGHT_FLOOR, BandBlender, gaussian_importance
from training.inference.predictor import Predictor
from training.inference.tiling import TileGrid
from training.io.writers import Sink, label_dtype

VALID = TileGeometry(padding="valid", depth=2)
SAME = TileGeometry(padding="same", depth=3, halo=12, kind="stride")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_importance_map_is_a_centred_gaussian_peaking_at_one():
    weights = gaussian_importance(41, 20)
    assert weights.shape == (41, 20) and weights.dtype == np.float32 and not weights.flags.writeable
    assert np.array_equal(weights, weights[::-1]) and np.array_equal(weights, weights[:, ::-1])
    assert weights.max() == 1.0 and weights[20, 9] == weights[20, 10] == 1.0
    # sigma = span / 8: the border is 2.5 sigma (41 px span, 20 px from the centre) -> exp(-8 * (20/20.5)^2)
    assert np.isclose(weights[0, 10], np.exp(-0.5 * (20 / (0.125 * 41)) ** 2), rtol=1e-6)
    assert gaussian_importance(9, 9, 0.001).min() == np.float32(WEIGHT_FLOOR)


def blend_constants(grid: TileGrid, region, classes: int = 2):
    """Blend tiles whose probabilities are a constant per tile and class; returns the emitted image
    and the boxes in emission order."""
    y0, y1, x0, x1 = region
    out = np.full((classes, y1 - y0, x1 - x0), np.nan, np.float32)
    boxes = []

    def emit(box, block):
        boxes.append(box)
        out[:, box[0] - y0 : box[1] - y0, box[2] - x0 : box[3] - x0] = block

    blender = BandBlender(grid, region, classes, 0.125, emit)
    shape = (classes, grid.geometry.output_size(grid.tile_h), grid.geometry.output_size(grid.tile_w))
    for tile in grid.tiles(region):
        blender.add(tile, np.full(shape, 0.0, np.float32) + tile_values(tile, classes)[:, None, None])
        assert blender.sums.shape == (classes, grid.span_h, x1 - x0) and blender.total.shape == (grid.span_h, x1 - x0)
    blender.finish()
    return out, boxes


def tile_values(tile, classes: int) -> np.ndarray:
    return np.array([(tile.row * 7 + tile.col * 3 + k) % 11 / 10 for k in range(classes)], np.float32)


@pytest.mark.parametrize("geometry,tile", [(VALID, 148), (SAME, 96)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (301, 257)])
def test_weights_are_normalised_at_borders_and_corners(geometry, tile, shape):
    """Each pixel is sum(w_i v_i) / sum(w_i) over the tiles covering it, corners and the overhanging
    last row/column included; computed here with whole-image arrays as the reference."""
    grid = TileGrid.plan(geometry, *shape, tile, overlap=0.5)
    weights = gaussian_importance(grid.span_h, grid.span_w)
    num = np.zeros((2, *shape), np.float64)
    den = np.zeros(shape, np.float64)
    for t in grid.tiles():
        y0, y1, x0, x1 = t.output
        wy, wx = t.crop[0] - grid.offset, t.crop[1] - grid.offset
        w = weights[wy : wy + y1 - y0, wx : wx + x1 - x0]
        num[:, y0:y1, x0:x1] += w * tile_values(t, 2)[:, None, None]
        den[y0:y1, x0:x1] += w
    blended, _ = blend_constants(grid, (0, shape[0], 0, shape[1]))
    assert np.abs(blended - num / den).max() <= 1e-6
    if shape == (301, 257):  # really mixed: a pixel between tiles is none of their values
        assert len(grid) > 4 and (num / den)[0, 150, 0] not in tile_values(grid.tile(0, 0), 2)
        part, _ = blend_constants(grid, (45, 230, 33, 200))  # a block alone: tiles cut on all sides
        assert np.abs(part - (num / den)[:, 45:230, 33:200]).max() <= 1e-6


@pytest.mark.parametrize("geometry,tile", [(VALID, 148), (SAME, 96)])
def test_a_constant_blends_to_itself_everywhere(geometry, tile):
    grid = TileGrid.plan(geometry, 301, 257, tile, overlap=0.5)
    out = []
    blender = BandBlender(grid, (0, 301, 0, 257), 1, 0.125, lambda box, block: out.append(block))
    size = (1, geometry.output_size(grid.tile_h), geometry.output_size(grid.tile_w))
    for t in grid.tiles():
        blender.add(t, np.full(size, 0.3, np.float32))
    blender.finish()
    assert np.concatenate(out, axis=1).shape == (1, 301, 257)
    assert np.abs(np.concatenate(out, axis=1) - 0.3).max() <= 1e-7


def test_band_is_the_only_accumulator_and_rows_leave_in_order():
    """1000x777 with overlapping tiles: the accumulator stays (K, span_h, width), rows are emitted
    top to bottom exactly once, at most one tile step at a time (the last band excepted)."""
    grid = TileGrid.plan(VALID, 1000, 777, 148, overlap=0.25)
    assert (grid.span_h, grid.step_h) == (108, 80) and grid.span_h < 1000
    _, boxes = blend_constants(grid, (0, 1000, 0, 777))
    assert [b[0] for b in boxes] == [0] + [b[1] for b in boxes[:-1]] and boxes[-1][1] == 1000
    assert all(b[2:] == (0, 777) for b in boxes)
    assert all(b[1] - b[0] == grid.step_h for b in boxes[:-1]) and boxes[-1][1] - boxes[-1][0] <= grid.span_h
    _, inside = blend_constants(grid, (123, 456, 77, 600))
    assert inside[0][0] == 123 and inside[-1][1] == 456 and all(b[2:] == (77, 600) for b in inside)


class RecordingSink(Sink):
    """A real sink into an array that also records the box of every write."""

    def __init__(self, shape, dtype) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.array = np.zeros(shape, dtype)
        self.boxes = []

    def write(self, box, block) -> None:
        self.boxes.append(box)
        self.array[..., box[0] : box[1], box[2] : box[3]] = block


@pytest.mark.parametrize("shape,tile", [((1000, 777), 148), ((3, 5), None), ((1, 1), None), ((130, 61), 100)])
def test_blended_valid_unet_equals_the_whole_image_pass(gray, shape, tile):
    """A valid U-Net is translation-equivariant on the stride grid: every overlapping tile agrees,
    so the weighted mean is the whole-image pass (within float round-off)."""
    predictor = Predictor(gray, device="cpu", tile=tile, blend="gaussian")
    image = random_image(shape, seed=shape[0])
    blended = predictor.predict(image, probabilities=True)
    assert_exact(blended, predictor.predict_whole(image))
    if shape == (1000, 777):
        grid = predictor.grid(*shape)
        assert grid.span_h > grid.step_h and len(grid) == 13 * 10  # overlapping, really blended
        assert 0.1 < (blended.labels == 1).mean() < 0.9
        labels = RecordingSink(shape, label_dtype(2))
        predictor.predict_to(image, labels=labels)
        assert np.array_equal(labels.array, blended.labels)
        assert max(y1 - y0 for y0, y1, _, _ in labels.boxes) <= grid.span_h  # streamed in row bands


def test_blended_region_is_the_same_block_of_a_whole_run_bit_for_bit(gray):
    image = random_image((333, 301), seed=12)
    predictor = Predictor(gray, device="cpu", tile=100, blend="gaussian", overlap=0.5)
    full = predictor.predict(image, probabilities=True)
    stats = predictor.statistics(image)
    for y0, y1, x0, x1 in [(37, 301, 90, 250), (332, 333, 0, 1), (0, 333, 0, 301)]:
        part = predictor.predict_region(image, y0, y1, x0, x1, stats, probabilities=True)
        assert np.array_equal(part.probabilities, full.probabilities[:, y0:y1, x0:x1])
        assert np.array_equal(part.labels, full.labels[y0:y1, x0:x1])


def test_same_padded_smp_blends_within_its_halo_to_the_whole_image_pass(isbi_slice):
    """Same padding: each tile blends only its output inside the measured halo, so overlapping tiles
    agree and the mean matches the whole-image pass (measured max |p diff| 1e-6 here, 2e-4 for
    crop-only stitching, whose tiles each see just one halo's context)."""
    bundle = make_bundle(SMALL_SMP, classes=["a", "b"], batchnorm_statistics=False)
    predictor = Predictor(bundle, device="cpu", tile=256, blend="gaussian")
    grid = predictor.grid(512, 512)
    assert (grid.span_h, grid.step_h, len(grid)) == (128, 96, 25)
    blended = predictor.predict(isbi_slice, probabilities=True)
    whole = predictor.predict_whole(isbi_slice)
    assert np.abs(blended.probabilities - whole.probabilities).max() <= 1e-4
    assert (blended.labels != whole.labels).mean() <= 1e-4


def test_instance_norm_warning_names_the_blend_option():
    bundle = make_bundle({**TINY_UNET, "norm": "instance"}, probe="noise", each_class=True)
    with pytest.warns(UserWarning, match=r"blend='gaussian' \(tessera predict --blend gaussian\)"):
        Predictor(bundle, device="cpu")
    with pytest.warns(UserWarning, match="not exact") as caught:
        blended = Predictor(bundle, device="cpu", tile=100, blend="gaussian")
    assert "--blend" not in str(caught[0].message)
    probs = blended.predict(random_image((150, 140), seed=4), probabilities=True).probabilities
    assert probs.shape == (2, 150, 140) and np.allclose(probs.sum(0), 1, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"blend": "linear"}, "blend must be one of none, gaussian"),
    ({"blend": "gaussian", "overlap": 1.0}, "overlap"),
    ({"blend": "gaussian", "overlap": -0.1}, "overlap"),
    ({"blend": "gaussian", "sigma_scale": 0.0}, "sigma_scale"),
])
def test_bad_blend_settings_are_refused(gray, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor(gray, device="cpu", **kwargs)
