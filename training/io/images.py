"""Decoding images into arrays, with one policy for every way in (files, uploads, datasets).

Result: a numpy array ``(H, W)`` for one channel or ``(H, W, C)`` for several, of type uint8,
uint16 or float32, never anything else. Conversions that keep the information are made silently
(palette -> RGB or gray, CMYK -> RGB, an alpha channel dropped, 1-bit -> uint8, int16 -> float32);
everything else is refused with an :class:`ImageError` whose ``reason`` says what kind of problem
it is (the HTTP service maps reasons to status codes).

Size limits are checked on the header, *before* pixels are decoded, so a decompression bomb (a
tiny PNG claiming 100000 x 100000 pixels) costs nothing.

The EXIF / TIFF orientation tag (274; values 2-8: mirrored and rotated grids, as phone cameras
store them) is applied after decoding, so pixels come out on the grid every image viewer shows and
a mask computed from them lines up with the picture. :func:`image_orientation` tells which tag a
file had; :class:`Oriented` applies a tag to a lazy source window by window.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, ImageFile, UnidentifiedImageError

from training.errors import TesseraError

#: File suffixes of images a folder of inputs holds (datasets, folder jobs), case-insensitive;
#: anything else in such a folder (a README, classes.yaml) is not an image.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: File suffixes of TIFF/BigTIFF files: read lazily (:mod:`training.io.readers`), written as tiled
#: BigTIFF (:mod:`training.io.writers`), taken by gigapixel jobs.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")

#: Default cap on decoded pixels (height x width) for one image: 2**31, about a 46k x 46k slide.
#: Larger images belong in a TIFF/zarr read lazily by the tiler.
DEFAULT_MAX_PIXELS = 2**31

Reason = Literal["empty", "unsupported", "corrupt", "too_large", "shape", "channels"]

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The TIFF/EXIF tag holding the orientation, and each value as (transpose, flip rows, flip
#: columns) applied to the stored grid in that order: 2 mirrored, 3 rotated 180 degrees, 4 flipped,
#: 5 transposed, 6 rotated 90 degrees clockwise, 7 transversed, 8 rotated 90 degrees anticlockwise.
ORIENTATION_TAG = 274
ORIENTATIONS = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}

# Pillow's own bomb check would raise before ours with a less useful message; we check the header.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(TesseraError):
    """An image that cannot be used; ``reason`` is one of :data:`Reason`."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (PNG, JPEG, TIFF, BMP ...) under the policy above."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})", "corrupt") from None
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as error:
        raise ImageError(f"{path}: {error}", error.reason) from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes under the policy above."""
    if not data:
        raise ImageError("empty image: no bytes", "empty")
    if data[:4] in TIFF_MAGIC:
        pixels = _decode_tiff(data, max_pixels)
    else:
        pixels = _decode_pillow(data, max_pixels)
    return _check(pixels)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise ImageError(f"image has no pixels ({width}x{height})", "shape")
    if height * width > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            "too_large",
        )


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            series = tiff.series
            if not series:
                raise ImageError("TIFF holds no image", "corrupt")
            if len(tiff.pages) > 1:
                raise ImageError(
                    f"multi-page TIFF ({len(tiff.pages)} pages): send one 2-D image per request", "shape"
                )
            page = tiff.pages[0]
            shape = page.shape
            _check_size(shape[0], shape[1] if len(shape) > 1 else 0, max_pixels)
            pixels = page.asarray()
            orientation = tiff_orientation(page)
    except ImageError:
        raise
    except Exception as error:  # tifffile raises many types for broken files
        raise ImageError(f"TIFF cannot be decoded ({error})", "corrupt") from None
    if pixels.ndim == 3 and pixels.shape[0] <= 4 < pixels.shape[-1]:
        pixels = np.moveaxis(pixels, 0, -1)
    return _normalise_dtype(orient(pixels, orientation))


def _decode_pillow(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR":  # Pillow refuses a 0-pixel PNG unnamed
            _check_size(int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), max_pixels)
        raise ImageError("not an image Tessera can read (PNG, JPEG, TIFF, BMP)", "unsupported") from None
    except Exception as error:
        raise ImageError(f"image header cannot be read ({error})", "corrupt") from None
    width, height = image.size
    _check_size(height, width, max_pixels)
    if getattr(image, "n_frames", 1) > 1:
        raise ImageError(f"image has {image.n_frames} frames: send one 2-D image", "shape")
    try:
        image.load()
    except Exception as error:  # truncated or corrupt data
        raise ImageError(f"image data is truncated or corrupt ({error})", "corrupt") from None
    return orient(_from_pillow(image), pillow_orientation(image))


def _from_pillow(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("I;16B", "I;16L", "I;16N"):
        image = image.convert("I;16")
    pixels = np.asarray(image)
    if image.mode in ("RGBA", "LA"):
        pixels = pixels[..., :-1]
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    if image.mode == "RGB" and pixels.ndim == 3 and _is_gray(pixels):
        pixels = pixels[..., 0]
    return _normalise_dtype(np.ascontiguousarray(pixels))


def _is_gray(pixels: np.ndarray) -> bool:
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all())


def _normalise_dtype(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype in (np.uint8, np.uint16, np.float32):
        return pixels
    if pixels.dtype == np.int32 and pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
        return pixels.astype(np.uint16)
    if np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32)
    raise ImageError(f"pixel type {pixels.dtype} is not supported", "unsupported")


def pillow_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened Pillow image (JPEG, PNG, WebP, TIFF), 1 when absent or invalid."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is ignored, as viewers do
        return 1
    return value if value in ORIENTATIONS else 1


def tiff_orientation(page) -> int:
    """The orientation tag of a tifffile page, 1 when absent or invalid."""
    tag = page.tags.get(ORIENTATION_TAG)
    value = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
    return value if value in ORIENTATIONS else 1


def image_orientation(data: bytes) -> int:
    """The orientation tag (1-8) of encoded image bytes, read from the header only; 1 if none."""
    try:
        if data[:4] in TIFF_MAGIC:
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                return tiff_orientation(tiff.pages[0])
        with Image.open(io.BytesIO(data)) as image:
            return pillow_orientation(image)
    except Exception:  # undecodable bytes have no orientation; decoding reports the problem
        return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (stored grid, ``(H, W)`` or ``(H, W, C)``) on the grid a viewer shows for ``orientation``."""
    transpose, flip_rows, flip_cols = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    if transpose:
        pixels = pixels.swapaxes(0, 1)
    if flip_rows:
        pixels = pixels[::-1]
    if flip_cols:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels) if orientation != 1 else pixels


class Oriented:
    """A lazy source (stored grid) presented on its oriented grid, reading only the windows asked for."""

    def __init__(self, source, orientation: int) -> None:
        self.source, self.orientation = source, orientation
        self.transpose, self.flip_rows, self.flip_cols = ORIENTATIONS[orientation]
        height, width = source.shape[:2]
        self.shape = (width, height, *source.shape[2:]) if self.transpose else tuple(source.shape)
        self.dtype = np.dtype(source.dtype)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        if self.flip_rows:
            r0, r1 = self.shape[0] - r1, self.shape[0] - r0
        if self.flip_cols:
            c0, c1 = self.shape[1] - c1, self.shape[1] - c0
        stored = (slice(c0, c1), slice(r0, r1)) if self.transpose else (slice(r0, r1), slice(c0, c1))
        return orient(np.asarray(self.source[stored]), self.orientation)


def oriented(source, orientation: int):
    """``source`` itself for orientation 1, else an :class:`Oriented` view of it."""
    return source if orientation == 1 else Oriented(source, orientation)


def _check(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] > 4):
        raise ImageError(f"image shape {pixels.shape} is not 2-D gray or colour", "shape")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ImageError(f"image has no pixels ({pixels.shape})", "shape")
    if pixels.dtype == np.float32 and not np.isfinite(pixels).all():
        raise ImageError("image has NaN or infinite pixels", "corrupt")
    return pixels


def channel_count(pixels: np.ndarray) -> int:
    """Channels of a decoded image: 1 for ``(H, W)``, ``C`` for ``(H, W, C)``."""
    return 1 if pixels.ndim == 2 else pixels.shape[-1]


def match_channels(pixels: np.ndarray, in_channels: int) -> np.ndarray:
    """Fit a decoded image to a model's input channels, or refuse it.

    Gray -> RGB is replicated; RGB whose channels are equal is already gray (decoding folds it);
    any other mismatch is an :class:`ImageError` with reason ``"channels"``.
    """
    have = channel_count(pixels)
    if have == in_channels:
        return pixels
    if have == 1 and in_channels == 3:
        return np.repeat(pixels[..., None], 3, axis=-1)
    if in_channels == 1 and pixels.ndim == 3 and have == 1:
        return pixels[..., 0]
    raise ImageError(f"image has {have} channel(s), the model takes {in_channels}", "channels")
