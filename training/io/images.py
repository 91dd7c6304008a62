"""Decoding images into arrays, with one policy for every way in (files, uploads, datasets).

Result: a numpy array ``(H, W)`` for one channel or ``(H, W, C)`` for several, of type uint8,
uint16 or float32, never anything else. Conversions that keep the information are made silently
(palette -> RGB or gray, CMYK -> RGB, an alpha channel dropped, 1-bit -> uint8, int16 -> float32);
everything else is refused with an :class:`ImageError` whose ``reason`` says what kind of problem
it is (the HTTP service maps reasons to status codes).

Size limits are checked on the header, *before* pixels are decoded, so a decompression bomb (a
tiny PNG claiming 100000 x 100000 pixels) costs nothing.
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
    except ImageError:
        raise
    except Exception as error:  # tifffile raises many types for broken files
        raise ImageError(f"TIFF cannot be decoded ({error})", "corrupt") from None
    if pixels.ndim == 3 and pixels.shape[0] <= 4 < pixels.shape[-1]:
        pixels = np.moveaxis(pixels, 0, -1)
    return _normalise_dtype(pixels)


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
    return _from_pillow(image)


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
