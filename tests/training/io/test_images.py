"""The one decoding policy: what is converted, what is refused, and that bombs cost nothing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from training.io.images import ImageError, decode_image, match_channels, read_image


def png(array: np.ndarray, mode: str | None = None, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def tiff(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


GRAY = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)


def test_gray_png_and_16_bit_tiff_round_trip():
    assert np.array_equal(decode_image(png(GRAY)), GRAY)
    deep = (np.arange(600, dtype=np.uint16) * 100).reshape(30, 20)
    assert np.array_equal(decode_image(tiff(deep)), deep)
    assert decode_image(png(deep)).dtype == np.uint16


def test_float_tiff_kept_and_nan_refused():
    values = np.linspace(0, 1, 600, dtype=np.float32).reshape(30, 20)
    assert np.array_equal(decode_image(tiff(values)), values)
    values[0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN") as error:
        decode_image(tiff(values))
    assert error.value.reason == "corrupt"


def test_palette_alpha_cmyk_are_converted():
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert np.array_equal(decode_image(buffer.getvalue()), np.asarray(palette.convert("RGB")))
    rgba = np.dstack([rgb, np.full((8, 9), 128, np.uint8)])
    assert np.array_equal(decode_image(png(rgba)), rgb)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=100)
    assert decode_image(buffer.getvalue()).shape == (8, 9, 3)


def test_rgb_with_equal_channels_is_gray():
    assert np.array_equal(decode_image(png(np.dstack([GRAY] * 3))), GRAY)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image", "unsupported"),
        (png(GRAY)[:60], "corrupt"),
        (png_bomb(100_000, 100_000), "too_large"),
    ],
    ids=["empty", "text", "truncated-png", "bomb-header"],
)
def test_bad_bytes_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageError) as error:
        decode_image(data)
    assert error.value.reason == reason


def test_truncated_jpeg_refused():
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([GRAY, GRAY // 2, GRAY // 3])).save(buffer, format="JPEG")
    with pytest.raises(ImageError) as error:
        decode_image(buffer.getvalue()[:200])
    assert error.value.reason == "corrupt"


def test_zero_pixel_png_is_a_shape_error():
    with pytest.raises(ImageError, match="no pixels") as error:
        decode_image(png_bomb(0, 0))
    assert error.value.reason == "shape"


def test_pixel_limit_is_checked_on_the_header():
    with pytest.raises(ImageError, match="30x40 = 1,200 pixels, over the limit of 1,000") as error:
        decode_image(png(np.zeros((40, 30), np.uint8)), max_pixels=1000)
    assert error.value.reason == "too_large"


def test_multi_page_tiff_refused():
    stack = np.zeros((3, 10, 10), np.uint8)
    with pytest.raises(ImageError, match="multi-page TIFF \\(3 pages\\)"):
        decode_image(tiff(stack, photometric="minisblack"))


def test_read_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(png(GRAY)[:50])
    with pytest.raises(ImageError, match="broken.png: image data is truncated"):
        read_image(broken)
    with pytest.raises(ImageError, match="missing.png: cannot read"):
        read_image(tmp_path / "missing.png")


def test_match_channels():
    assert match_channels(GRAY, 3).shape == (30, 20, 3)
    colour = np.random.default_rng(1).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    with pytest.raises(ImageError, match="3 channel\\(s\\), the model takes 1") as error:
        match_channels(colour, 1)
    assert error.value.reason == "channels"
