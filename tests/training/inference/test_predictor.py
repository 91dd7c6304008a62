"""The one predictor: tiled inference equals ONE whole-image forward pass (valid U-Net)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.bundles import SMALL_SMP, TINY_UNET, make_bundle
from tests.support.exact import assert_exact
from tests.support.images import random_image
from training.bundle import Bundle, load_bundle, save_bundle
from training.device import BatchRunner, resolve_device
from training.inference.autotile import choose_tile
from training.inference.predictor import Predictor
from training.inference.tta import tta_caveat
from training.io.images import ImageError
from training.io.writers import encode_probabilities
from training.normalization import Normalization

RGB_UNET = {**TINY_UNET, "in_channels": 3, "num_classes": 3, "depth": 3}
ONE_CLASS = {**TINY_UNET, "num_classes": 1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def rgb() -> Bundle:
    return make_bundle(RGB_UNET, seed=1, probe="noise", each_class=True)


@pytest.mark.parametrize("shape", [(1000, 777), (3, 5), (1, 1), (130, 61)])
@pytest.mark.parametrize("tile", [60, 148, None])
def test_gray_tiled_equals_whole_image_pass(gray, shape, tile):
    predictor = Predictor(gray, device="cpu", tile=tile, batch_size=4)
    image = random_image(shape, seed=shape[0])
    tiled = predictor.predict(image, probabilities=True)
    whole = predictor.predict_whole(image)
    assert_exact(tiled, whole)
    if shape == (1000, 777) and tile == 60:
        assert len(predictor.grid(*shape)) == 50 * 39  # really many tiles, really stitched
    if shape == (1000, 777):  # the labels are not constant: the comparison can fail
        assert 0.1 < (tiled.labels == 1).mean() < 0.9


@pytest.mark.parametrize("shape", [(1000, 777), (3, 5), (1, 1)])
@pytest.mark.parametrize("tile", [132, 228])
def test_rgb_tiled_equals_whole_image_pass(rgb, shape, tile):
    predictor = Predictor(rgb, device="cpu", tile=tile, batch_size=3)
    image = random_image(shape + (3,), seed=7)
    assert_exact(predictor.predict(image, probabilities=True), predictor.predict_whole(image))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_other_pixel_types_are_exact_too(gray, dtype):
    predictor = Predictor(gray, device="cpu", tile=100)
    image = random_image((301, 257), seed=3, dtype=dtype)
    assert_exact(predictor.predict(image, probabilities=True), predictor.predict_whole(image))


def test_tta_tiled_equals_tta_whole_and_differs_from_plain(gray):
    image = random_image((203, 150), seed=5)
    plain = Predictor(gray, device="cpu", tile=100).predict(image, probabilities=True)
    for mode in ("flips", "d4"):
        predictor = Predictor(gray, device="cpu", tile=100, tta=mode)
        tiled = predictor.predict(image, probabilities=True)
        assert_exact(tiled, predictor.predict_whole(image))
        assert np.abs(tiled.probabilities - plain.probabilities).max() > 1e-3


@pytest.mark.parametrize(("mode", "tile"), [("flips", 100), ("d4", 148)])
def test_tta_of_an_off_centre_model_is_corrected_and_still_exact(gray, mode, tile):
    """A model trained with ``data.label_offset``: each view is moved back by its correction,
    tiles read ``correction_reach`` more context, and tiled still equals whole."""
    info = copy.deepcopy(gray.info)
    info.provenance = {"config": {"augment": {}, "data": {"label_offset": [-0.6, -0.2]}}}
    image = random_image((203, 150), seed=6)
    corrected = Predictor(Bundle(model=gray.model, info=info), device="cpu", tile=tile, tta=mode)
    plain = Predictor(gray, device="cpu", tile=tile, tta=mode)
    assert corrected.geometry.context == gray.info.geometry.context + 2  # |0.6 - (-0.6)| rounds up to 2
    assert plain.geometry == gray.info.geometry
    tiled = corrected.predict(image, probabilities=True)
    assert_exact(tiled, corrected.predict_whole(image))
    assert np.abs(tiled.probabilities - plain.predict(image, probabilities=True).probabilities).max() > 1e-3


@pytest.mark.parametrize(
    ("config", "mode", "warning"),
    [
        ({"augment": {}}, "d4", None),  # the default augmentation flips and turns
        ({}, "d4", None),  # a bundle that does not say
        ({"augment": {"flip": False, "rotate90": False}}, "d4", "trained without flips or 90-degree turns"),
        ({"augment": {"flip": False, "rotate90": False}}, "flips", "trained without flips:"),
        ({"augment": {"flip": {"axes": "horizontal"}}}, "flips", "trained without flips on both axes"),
        ({"augment": {"flip": False, "rotate90": False}}, "none", None),
        ({"augment": {}, "data": {"label_offset": [-0.6, -0.2]}}, "flips", None),  # corrected, no caveat
        ({"augment": {}, "data": {"label_offset": [0.0, 0.0]}}, "d4", None),
    ],
)
def test_tta_warns_when_it_may_cost_accuracy(gray, config, mode, warning):
    info = copy.deepcopy(gray.info)
    info.provenance = {"config": config} if config else {}
    bundle = Bundle(model=gray.model, info=info)
    if warning:
        with pytest.warns(UserWarning, match=warning):
            Predictor(bundle, device="cpu", tta=mode)
    else:
        assert tta_caveat(info, mode) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Predictor(bundle, device="cpu", tta=mode)


def test_region_equals_the_same_block_of_a_whole_run(gray):
    image = random_image((700, 650), seed=11)
    predictor = Predictor(gray, device="cpu", tile=148, batch_size=3)
    full = predictor.predict(image, probabilities=True)
    stats = predictor.statistics(image)
    for y0, y1, x0, x1 in [(0, 700, 0, 650), (123, 456, 77, 600), (699, 700, 0, 1), (200, 320, 200, 320)]:
        part = predictor.predict_region(image, y0, y1, x0, x1, stats, probabilities=True)
        assert np.array_equal(part.labels, full.labels[y0:y1, x0:x1])
        assert np.array_equal(part.probabilities, full.probabilities[:, y0:y1, x0:x1])


def test_batch_size_does_not_change_results(gray):
    image = random_image((400, 390), seed=2)
    one = Predictor(gray, device="cpu", tile=100, batch_size=1).predict(image, probabilities=True)
    five = Predictor(gray, device="cpu", tile=100, batch_size=5).predict(image, probabilities=True)
    assert np.array_equal(one.labels, five.labels)
    assert np.abs(one.probabilities - five.probabilities).max() <= 1e-6


def test_normalisation_is_per_image_not_per_tile(gray):
    # one bright half: per-tile statistics would shift the dark half's tiles differently
    image = random_image((300, 300), seed=4) // 4
    image[:, 150:] += 150
    predictor = Predictor(gray, device="cpu", tile=60)
    assert_exact(predictor.predict(image, probabilities=True), predictor.predict_whole(image))


def test_one_class_model_uses_sigmoid_and_threshold():
    predictor = Predictor(make_bundle(ONE_CLASS, probe="noise", each_class=True), device="cpu", tile=100)
    image = random_image((120, 90), seed=9)
    tiled = predictor.predict(image, probabilities=True)
    whole = predictor.predict_whole(image)
    assert tiled.probabilities.shape == (1, 120, 90)
    assert np.array_equal(tiled.labels, (tiled.probabilities[0] > 0.5).astype(np.uint8))
    assert_exact(tiled, whole)


def test_a_bundles_decision_threshold_decides_labels_on_every_path(gray):
    image = random_image((130, 100), seed=5)
    plain = Predictor(gray, device="cpu", tile=60).predict(image, probabilities=True)
    threshold = round(float(np.quantile(plain.probabilities[1], 0.3)), 6)
    expected = (plain.probabilities[1] >= threshold).astype(np.uint8)
    assert not np.array_equal(expected, plain.labels)
    gray.info.threshold = threshold
    try:
        thresholded = Predictor(gray, device="cpu", tile=60)
        assert np.array_equal(thresholded.predict(image).labels, expected)
        assert np.array_equal(thresholded.predict_whole(image).labels, expected)
        assert np.array_equal(thresholded.predict_region(image, 10, 90, 20, 70).labels, expected[10:90, 20:70])
        # the caller can still ask for the argmax, or another threshold
        assert np.array_equal(Predictor(gray, device="cpu", tile=60, threshold=None).predict(image).labels, plain.labels)
        other = Predictor(gray, device="cpu", tile=60, threshold=0.9).predict(image).labels
        assert np.array_equal(other, (plain.probabilities[1] >= 0.9).astype(np.uint8))
    finally:
        gray.info.threshold = None


def test_loads_a_bundle_path_and_channels_are_matched(tiny_bundle, rgb):
    predictor = Predictor(tiny_bundle, device="cpu")
    assert predictor.info.classes == ["background", "foreground"]
    assert predictor.tile == predictor.info.tile["input"]
    assert predictor.predict(random_image((50, 40))).labels.shape == (50, 40)
    # gray into an RGB model: replicated, identical to sending the replicated image
    rgb_predictor = Predictor(rgb, device="cpu", tile=100)
    gray_image = random_image((40, 30), seed=1)
    assert np.array_equal(
        rgb_predictor.predict(gray_image).labels,
        rgb_predictor.predict(np.repeat(gray_image[..., None], 3, -1)).labels,
    )


def test_bad_inputs_are_refused_with_reasons(gray):
    predictor = Predictor(gray, device="cpu")
    with pytest.raises(ImageError, match="channel") as error:
        predictor.predict(random_image((20, 20, 3)))
    assert error.value.reason == "channels"
    with pytest.raises(ImageError, match="shape"):
        predictor.predict(np.zeros((0, 10), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        predictor.predict(np.zeros((4, 4, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="nearest"):
        Predictor(gray, device="cpu", tile=101)
    with pytest.raises(ValueError, match="tta"):
        Predictor(gray, device="cpu", tta="sideways")


def test_progress_reports_every_tile(gray):
    calls: list[tuple[int, int]] = []
    predictor = Predictor(gray, device="cpu", tile=60, batch_size=4)
    assert len(predictor.grid(50, 70)) == 3 * 4  # step 20
    predictor.predict(random_image((50, 70)), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 12), (8, 12), (12, 12)]


def test_reader_errors_reach_the_caller(gray):
    class Broken:
        shape = (500, 500)

        def __getitem__(self, key):
            raise OSError("disk gone")

    predictor = Predictor(gray, device="cpu", tile=60)
    with pytest.raises(OSError, match="disk gone"):
        predictor.predict_region(Broken(), 0, 500, 0, 500, (np.zeros(1), np.ones(1)))


def test_quantised_probabilities():
    probs = np.array([0.0, 0.5, 0.999, 1.0], np.float32)
    assert encode_probabilities(probs, np.uint8).tolist() == [0, 128, 255, 255]
    assert encode_probabilities(probs, np.float16).dtype == np.float16


def test_batch_runner_halves_on_out_of_memory_and_keeps_the_size():
    seen: list[int] = []

    def limited(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch * 2

    runner = BatchRunner(limited, 8)
    out = runner(torch.arange(7.0))
    assert torch.equal(out, torch.arange(7.0) * 2) and runner.size == 2
    assert seen == [7, 4, 2, 2, 2, 1]
    with pytest.raises(RuntimeError, match="shape"):
        BatchRunner(lambda b: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 4)(torch.ones(3))


def test_device_auto_is_cpu_here_and_cuda_refused_without_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_saved_bundle_round_trip_predicts_identically(tmp_path, gray):
    path = save_bundle(tmp_path / "g.safetensors", gray.model, gray.info)
    image = random_image((77, 99))
    assert np.array_equal(
        Predictor(load_bundle(path), device="cpu", tile=100).predict(image).labels,
        Predictor(gray, device="cpu", tile=100).predict(image).labels,
    )


def test_tile_auto_measures_valid_candidates_within_the_budget(gray):
    predictor = Predictor(gray, device="cpu", tile="auto", batch_size=2)
    choice = predictor.tile_choice
    assert predictor.tile == choice.size == max(choice.throughput, key=choice.throughput.get)
    assert len(choice.throughput) >= 3 and all(gray.info.geometry.is_valid_input(s) for s in choice.throughput)

    small = choose_tile(predictor, budget=1)  # only the smallest candidate is ever allowed
    assert list(small.throughput) == [min(choice.throughput)]


def test_same_padded_smp_agrees_with_whole_image_within_1e4(isbi_slice):
    """Crop-only stitching with the measured halo: label disagreement <= 1e-4 of the pixels
    (measured 3.8e-6 here); half the halo is visibly worse, so the test can fail."""
    # centre the head on the slice so both classes occur (random weights)
    pixels = torch.from_numpy(Normalization.apply(isbi_slice, *Normalization().statistics(isbi_slice)))[None]
    bundle = make_bundle(SMALL_SMP, classes=["a", "b"], batchnorm_statistics=False, probe=pixels)
    model, info = bundle.model, bundle.info
    assert info.geometry.padding == "same" and info.geometry.halo == 64 and info.tile["input"] == 512
    predictor = Predictor(bundle, device="cpu", tile=256)
    assert len(predictor.grid(512, 512)) == 16  # 128 px kept per tile: many seams
    tiled = predictor.predict(isbi_slice)
    whole = predictor.predict_whole(isbi_slice)
    assert 0.2 < tiled.labels.mean() < 0.8
    assert (tiled.labels != whole.labels).mean() <= 1e-4

    half = Bundle(model=model, info=replace(info, geometry=replace(info.geometry, halo=32)))
    halved = Predictor(half, device="cpu", tile=256)
    assert (halved.predict(isbi_slice).labels != halved.predict_whole(isbi_slice).labels).mean() > 1e-3


def test_instance_norm_models_warn_that_tiling_is_not_exact():
    with pytest.warns(UserWarning, match="instance/group norm"):
        Predictor(make_bundle({**TINY_UNET, "norm": "instance"}, probe="noise", each_class=True), device="cpu")


def test_default_cpu_batch_makes_regions_byte_identical_for_a_wider_model():
    """Wider layers take different oneDNN paths per batch size (last-bit differences); with the
    default CPU batch a block computed alone equals the same block of a whole run bit for bit."""
    bundle = make_bundle({**TINY_UNET, "width": 16}, seed=3, probe="noise", each_class=True)
    predictor = Predictor(bundle, device="cpu", tile=148)
    image = random_image((333, 301), seed=12)
    full = predictor.predict(image, probabilities=True)
    part = predictor.predict_region(image, 37, 301, 90, 250, predictor.statistics(image), probabilities=True)
    assert np.array_equal(part.probabilities, full.probabilities[:, 37:301, 90:250])
