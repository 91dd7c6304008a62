"""`tessera predict`, the lazy readers and the tile-by-tile writers, on real files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from service.cli import main
from tests.support.bundles import TINY_UNET, make_bundle
from tests.support.images import random_image
from tests.support.paths import ISBI
from training.bundle import DEFAULT_BUNDLE, save_bundle
from training.inference.predictor import Predictor
from training.io.images import ImageError, read_image
from training.io.overlay import foreground_classes, overlay
from training.io.readers import fit_channels, open_image
from training.io.writers import TIFF_TILE, encode_probabilities, open_sink

RGB_UNET = {**TINY_UNET, "in_channels": 3}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    """A tiny U-Net whose default tile (428 px: 388 output) needs 2 x 2 tiles on a 512² slice."""
    bundle = make_bundle(TINY_UNET, probe="noise", each_class=True)
    bundle.info.tile = {"input": 428}
    return save_bundle(tmp_path_factory.mktemp("model") / "tiny.safetensors", bundle.model, bundle.info)


@pytest.fixture(scope="module")
def predictor(bundle_path):
    return Predictor(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 1100x900 uint16 image as a tiled TIFF (read lazily) and in memory."""
    image = random_image((1100, 900), seed=3, dtype=np.uint16)
    path = tmp_path_factory.mktemp("in") / "big.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    return path, image


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_png_in_png_out_equals_in_process_prediction(tmp_path, bundle_path, predictor, capsys):
    out, shown = tmp_path / "mask.png", tmp_path / "overlay.png"
    assert main(["predict", str(bundle_path), str(ISBI / "image" / "25.png"), "-o", str(out), "--overlay", str(shown)]) == 0
    image = read_image(ISBI / "image" / "25.png")
    expected = predictor.predict(image).labels
    assert np.array_equal(read_image(out), expected) and set(np.unique(expected)) == {0, 1}
    assert np.array_equal(read_image(shown), overlay(image, expected, foreground_classes(predictor.info)))
    assert '"tiles": 4' in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_threshold_decides_two_class_labels(tmp_path, bundle_path, predictor):
    image = read_image(ISBI / "image" / "25.png")
    p1 = predictor.predict(image, probabilities=True).probabilities[1]
    for option, expected in (("0.3", p1 >= 0.3), ("0.7", p1 >= 0.7), ("argmax", predictor.predict(image).labels)):
        out = tmp_path / f"mask-{option}.png"
        assert main(["predict", str(bundle_path), str(ISBI / "image" / "25.png"), "-o", str(out), "--threshold", option]) == 0
        assert np.array_equal(read_image(out), expected.astype(np.uint8))
    assert not np.array_equal(p1 >= 0.3, p1 >= 0.7)


def test_lazy_tiff_to_zarr_labels_and_uint8_probabilities(tmp_path, bundle_path, predictor, big):
    path, image = big
    assert main(["predict", str(bundle_path), str(path), "-o", str(tmp_path / "l.zarr"), "--probabilities", str(tmp_path / "p.zarr"), "--quiet"]) == 0
    expected = predictor.predict(image, probabilities=True)
    labels, probs = zarr.open_array(tmp_path / "l.zarr"), zarr.open_array(tmp_path / "p.zarr")
    step = predictor.grid(*image.shape).step_h
    assert labels.chunks == (step, step) and probs.chunks == (2, step, step)
    assert labels.attrs["classes"] == ["c0", "c1"]
    assert np.array_equal(labels[:], expected.labels)
    assert np.array_equal(probs[:], encode_probabilities(expected.probabilities, np.uint8))
    assert leftovers(tmp_path) == []


def test_tiled_bigtiff_output_float16_probabilities(tmp_path, bundle_path, predictor, big):
    path, image = big
    assert main(["predict", str(bundle_path), str(path), "-o", str(tmp_path / "l.tif"), "--probabilities",
                 "--probability-dtype", "float16", "--tile", "148", "--batch-size", "3", "--quiet"]) == 0
    tuned = Predictor(bundle_path, device="cpu", tile=148)
    expected = tuned.predict(image, probabilities=True)
    with tifffile.TiffFile(tmp_path / "l.tif") as tiff:
        assert tiff.is_bigtiff and tiff.pages[0].is_tiled and tiff.pages[0].tilewidth == TIFF_TILE
        assert np.array_equal(tiff.asarray(), expected.labels)
    probs = tifffile.imread(tmp_path / "l.probabilities.tif")
    assert probs.dtype == np.float16 and probs.shape == (1100, 900, 2)
    assert np.array_equal(np.moveaxis(probs, -1, 0), expected.probabilities.astype(np.float16))


def test_blend_gaussian_streams_the_blended_prediction_to_a_tiff(tmp_path, bundle_path, big, capsys):
    path, image = big
    assert main(["predict", str(bundle_path), str(path), "-o", str(tmp_path / "l.tif"), "--probabilities",
                 "--probability-dtype", "float32", "--tile", "148", "--blend", "gaussian", "--overlap", "0.5", "--quiet"]) == 0
    assert '"blend": "gaussian"' in capsys.readouterr().out
    blended = Predictor(bundle_path, device="cpu", tile=148, blend="gaussian", overlap=0.5)
    expected = blended.predict(image, probabilities=True)
    assert np.array_equal(tifffile.imread(tmp_path / "l.tif"), expected.labels)
    assert np.array_equal(np.moveaxis(tifffile.imread(tmp_path / "l.probabilities.tif"), -1, 0), expected.probabilities)
    assert leftovers(tmp_path) == []


def test_npy_output_and_zarr_and_ome_zarr_inputs(tmp_path, bundle_path, predictor):
    image = random_image((300, 260), seed=8)
    zarr.create_array(store=str(tmp_path / "in.zarr"), data=image, chunks=(100, 100))
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.create_array("0", data=image, chunks=(64, 64))
    expected = predictor.predict(image).labels
    for name in ("in.zarr", "ome.zarr"):
        out = tmp_path / f"{name}.npy"
        assert main(["predict", str(bundle_path), str(tmp_path / name), "-o", str(out), "--quiet"]) == 0
        assert np.array_equal(np.load(out), expected)


def test_readers_present_planar_rgb_channels_last_and_fit_gray_to_rgb(tmp_path):
    rgb = random_image((3, 70, 90), seed=1)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, planarconfig="separate", photometric="rgb")
    source = open_image(tmp_path / "planar.tif")
    assert source.shape == (70, 90, 3)
    assert np.array_equal(source[5:9, 10:30], np.moveaxis(rgb, 0, -1)[5:9, 10:30])
    gray = random_image((40, 50), seed=2)
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    fitted = fit_channels(open_image(tmp_path / "gray.tif"), 3)
    assert fitted.shape == (40, 50, 3) and np.array_equal(fitted[:, :][..., 2], gray)
    model = make_bundle(RGB_UNET, probe="noise", each_class=True)
    rgb_predictor = Predictor(model, device="cpu", tile=100)
    sink = np.zeros((40, 50), np.uint8)
    rgb_predictor.predict_to(open_image(tmp_path / "gray.tif"), labels=sink)
    assert np.array_equal(sink, rgb_predictor.predict(np.repeat(gray[..., None], 3, -1)).labels)


@pytest.mark.parametrize(
    "make,args,message",
    [
        (lambda d: d / "missing.png", [], "no such file"),
        (lambda d: (d / "junk.png").write_bytes(b"not an image at all") and d / "junk.png", [], "not an image"),
        (lambda d: (d / "empty.tif").write_bytes(b"") == 0 and d / "empty.tif", [], "empty"),
        (lambda d: (d / "empty.png").write_bytes(b"") == 0 and d / "empty.png", [], "empty"),
        (lambda d: tifffile.imwrite(d / "rgb.tif", random_image((30, 30, 3))) or d / "rgb.tif", [], "3 channel"),
        (lambda d: tifffile.imwrite(d / "big.tif", random_image((30, 40))) or d / "big.tif", ["--max-pixels", "1000"], "over the limit"),
        (lambda d: tifffile.imwrite(d / "ok.tif", random_image((30, 40))) or d / "ok.tif", ["--tile", "101"], "nearest"),
        (lambda d: tifffile.imwrite(d / "ok2.tif", random_image((30, 40))) or d / "ok2.tif", ["--tile", "big"], "--tile"),
        (lambda d: tifffile.imwrite(d / "ok3.tif", random_image((30, 40))) or d / "ok3.tif", ["--overlap", "0.5"], "--blend gaussian only"),
        (lambda d: tifffile.imwrite(d / "ok4.tif", random_image((30, 40))) or d / "ok4.tif",
         ["--blend", "gaussian", "--overlap", "1"], "overlap must be a fraction"),
        (lambda d: tifffile.imwrite(d / "ok5.tif", random_image((30, 40))) or d / "ok5.tif", ["--threshold", "high"], "--threshold"),
        (lambda d: tifffile.imwrite(d / "ok6.tif", random_image((30, 40))) or d / "ok6.tif", ["--threshold", "1.5"], "not a probability"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(tmp_path, bundle_path, capsys, make, args, message):
    source = make(tmp_path)
    out = tmp_path / "out" / "mask.png"
    out.parent.mkdir()
    assert main(["predict", str(bundle_path), str(source), "-o", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert list(out.parent.iterdir()) == []


def test_unknown_output_format_and_missing_bundle(tmp_path, bundle_path, capsys):
    image = ISBI / "image" / "26.png"
    assert main(["predict", str(bundle_path), str(image), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "unknown output format" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.safetensors"), str(image), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such bundle" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_stream_leaves_no_output_or_temporary(tmp_path, predictor):
    class FailsHalfway:
        shape, dtype = (600, 600), np.dtype(np.uint8)

        def __getitem__(self, key):
            if key[0].start is not None and key[0].start > 300:
                raise OSError("read error at row 300")
            return np.ones((600, 600), np.uint8)[key]

    for suffix in (".zarr", ".tif", ".npy", ".png"):
        with pytest.raises(OSError, match="row 300"):
            with open_sink(tmp_path / f"out{suffix}", (600, 600), np.uint8, (64, 64)) as sink:
                predictor.predict_to(FailsHalfway(), labels=sink, stats=(np.zeros(1), np.ones(1)))
    assert list(tmp_path.iterdir()) == []


def test_default_bundle_names(tmp_path, capsys):

    code = main(["predict", "-", str(ISBI / "image" / "27.png"), "-o", str(tmp_path / "m.png"), "--quiet"])
    if DEFAULT_BUNDLE.exists():
        assert code == 0 and read_image(tmp_path / "m.png").shape == (512, 512)
    else:
        assert code == 2 and "default.safetensors" in capsys.readouterr().err


def test_image_error_reasons_from_open_image(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError) as error:
        open_image(tmp_path / "bad.tif")
    assert error.value.reason == "corrupt"
    tifffile.imwrite(tmp_path / "stack.tif", random_image((5, 20, 20, 2)))
    with pytest.raises(ImageError, match="2-D|shape"):
        open_image(tmp_path / "stack.tif")
