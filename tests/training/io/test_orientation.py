"""EXIF / TIFF orientation (tag 274, values 2-8) is applied by the one decoding policy: in-memory
decoding (uploads, training data), lazy TIFF windows (CLI, batch, jobs), and so every mask lines
up with the picture a viewer shows. Each stored grid is made by hand from a picture, and the
decoded pixels and the predicted mask are compared with that picture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from service.cli import main as tessera
from tests.support.bundles import make_bundle
from tests.support.images import isbi_slice
from tests.support.paths import ISBI_SLICE
from training.inference.predictor import Predictor
from training.io.images import decode_image, image_orientation, read_image
from training.io.readers import open_image

#: For each orientation, the stored grid a camera writes for a picture ``p`` (the inverse of what
#: a viewer applies), spelled out with numpy.
STORED = {
    2: lambda p: p[:, ::-1],
    3: lambda p: p[::-1, ::-1],
    4: lambda p: p[::-1, :],
    5: lambda p: p.swapaxes(0, 1),
    6: lambda p: np.rot90(p, 1),  # the viewer turns it 90 degrees clockwise
    7: lambda p: p[::-1, ::-1].swapaxes(0, 1),
    8: lambda p: np.rot90(p, -1),
}


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A non-square, non-symmetric crop of the ISBI slice: what a viewer shows."""
    return np.ascontiguousarray(read_image(ISBI_SLICE)[40:230, 10:330])


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> tuple[Path, Predictor]:
    path = tmp_path_factory.mktemp("bundle") / "small.safetensors"
    make_bundle(path=path, classes=["background", "foreground"], batchnorm_statistics=False, probe=isbi_slice(25), threshold=0.4975)
    return path, Predictor(path, device="cpu")


def tiff_bytes(stored: np.ndarray, orientation: int, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(stored), extratags=[(274, "H", 1, orientation, False)], **options)
    return buffer.getvalue()


def jpeg_bytes(stored: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(stored))
    exif = image.getexif()
    exif[274] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_tiff_orientation_in_memory_and_lazy(picture, predictor, orientation: int, tmp_path) -> None:
    data = tiff_bytes(STORED[orientation](picture), orientation, tile=(64, 64))
    assert image_orientation(data) == orientation
    np.testing.assert_array_equal(decode_image(data), picture)
    path = tmp_path / "stored.tif"
    path.write_bytes(data)
    lazy = open_image(path)
    assert lazy.shape == picture.shape
    np.testing.assert_array_equal(lazy[17:133, 5:301], picture[17:133, 5:301])
    bundle, model = predictor
    out = tmp_path / "labels.tif"
    assert tessera(["predict", str(bundle), str(path), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), model.predict(picture).labels)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_jpeg_orientation(picture, predictor, orientation: int, tmp_path) -> None:
    """JPEG is lossy: the reference picture is the stored grid as decoded, turned by hand."""
    data = jpeg_bytes(STORED[orientation](picture), orientation)
    assert image_orientation(data) == orientation
    stored = np.asarray(Image.open(io.BytesIO(data)))  # Pillow leaves the stored grid alone
    shown = {2: lambda s: s[:, ::-1], 3: lambda s: s[::-1, ::-1], 4: lambda s: s[::-1], 5: lambda s: s.swapaxes(0, 1),
             6: lambda s: np.rot90(s, -1), 7: lambda s: s[::-1, ::-1].swapaxes(0, 1), 8: lambda s: np.rot90(s, 1)}[orientation](stored)
    assert shown.shape == picture.shape
    np.testing.assert_array_equal(decode_image(data), shown)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_image(path), shown)  # training data and the CLI read this way
    _, model = predictor
    labels = model.predict(decode_image(data)).labels
    np.testing.assert_array_equal(labels, model.predict(np.ascontiguousarray(shown)).labels)
    assert set(np.unique(labels)) == {0, 1}


def test_no_tag_and_undecodable_bytes_are_orientation_1(picture) -> None:
    assert image_orientation(tiff_bytes(picture, 1)) == 1
    assert image_orientation(b"not an image") == 1
