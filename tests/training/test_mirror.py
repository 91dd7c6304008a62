"""The one mirror: numpy 'reflect' (BORDER_REFLECT_101), even far outside the image."""

import cv2
import numpy as np
import pytest

from training.mirror import NUMPY_MODE, PaddedImage, mirror_indices, mirror_pad, mirror_window


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("pad", [0, 1, 5, 40])
def test_indices_equal_numpy_reflect(size, pad):
    axis = np.arange(size)
    expected = np.pad(axis, pad, mode=NUMPY_MODE)
    assert np.array_equal(axis[mirror_indices(-pad, size + pad, size)], expected)


def test_edge_is_not_repeated_unlike_symmetric():
    axis = np.array([10, 20, 30, 40])
    padded = axis[mirror_indices(-2, 6, 4)]
    assert padded.tolist() == [30, 20, 10, 20, 30, 40, 30, 20]
    assert not np.array_equal(padded, np.pad(axis, 2, mode="symmetric"))


def test_pad_equals_opencv_reflect_101_with_channels():
    image = np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8)
    ours = mirror_pad(image, (4, 5), (6, 7))
    theirs = cv2.copyMakeBorder(image, 4, 6, 5, 7, cv2.BORDER_REFLECT_101)
    assert np.array_equal(ours, theirs)


def test_window_reads_only_its_bounding_box():
    class Recording(np.ndarray):
        reads: list = []

        def __getitem__(self, key):
            Recording.reads.append(key)
            return np.asarray(self).__getitem__(key)

    image = np.arange(100 * 100).reshape(100, 100).view(Recording)
    window = mirror_window(image, 90, 110, -5, 15)
    assert window.shape == (20, 20)
    (rows, cols), = Recording.reads
    assert (rows.start, rows.stop, cols.start, cols.stop) == (89, 100, 0, 15)
    assert np.array_equal(window, np.pad(np.asarray(image), 10, mode="reflect")[100:120, 5:25])


def test_tiny_images_mirror_without_error():
    one = np.array([[7]], dtype=np.uint8)
    assert (mirror_window(one, -50, 50, -3, 4) == 7).all()
    three_by_five = np.arange(15).reshape(3, 5)
    assert np.array_equal(mirror_pad(three_by_five, (20, 20), (20, 20)), np.pad(three_by_five, 20, mode="reflect"))


def test_padded_image_is_sliced_with_the_border_it_carries():
    image = np.arange(6 * 10).reshape(6, 10)
    block = mirror_pad(image, (2, 3), (1, 1))[:6, :9]  # image rows -2..3, columns -3..5
    padded = PaddedImage(block, (-2, -3), image.shape)
    assert np.array_equal(mirror_window(padded, -2, 3, -3, 5), mirror_window(image, -2, 3, -3, 5))
    assert np.array_equal(padded[1:3, 0:4], image[1:3, 0:4])
    with pytest.raises(ValueError, match="not inside the padded block"):
        mirror_window(padded, 0, 5, 0, 7)
    symmetric = np.pad(image, ((2, 1), (3, 1)), mode="symmetric")[:6, :9]  # dask's boundary="reflect"
    trusted = mirror_window(PaddedImage(symmetric, (-2, -3), image.shape), -2, 3, -3, 5)
    assert not np.array_equal(trusted, mirror_window(image, -2, 3, -3, 5))
