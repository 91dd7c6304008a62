"""Reading an uploaded image from an HTTP request, within limits, into pixels.

Uploads come as ``multipart/form-data`` (the first file part, or the part named ``image``) or as
a raw body with an image content type. The body is streamed with a byte cap (over it: 413 before
the rest is read); the multipart form is parsed here with python-multipart (Starlette's form parser
turns a large part without a filename into a server error); pixels are decoded by the one policy
in :mod:`training.images`, which checks the pixel limit on the header before decoding.

Problems raise :class:`UploadError` carrying the HTTP status and a short error name; the service
turns it into ``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from training.images import ImageError, decode_image

#: HTTP status for each reason :class:`training.images.ImageError` gives.
STATUS_FOR_REASON = {
    "empty": 400,
    "corrupt": 400,
    "unsupported": 415,
    "too_large": 413,
    "shape": 422,
    "channels": 422,
}

#: Content types accepted as a raw image body.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "application/octet-stream")


class UploadError(Exception):
    """A request the service refuses: ``status`` (4xx), ``error`` (short name), ``detail``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Limits:
    """Upload limits: bytes of the request body and decoded pixels (height x width)."""

    max_bytes: int = 256 * 2**20
    max_pixels: int = 20_000 * 20_000


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, "too_large", f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, "too_large", f"request body is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The bytes of the part named ``image``, else of the first part with a filename."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_request", "multipart body without a boundary")
    parts: list[tuple[dict[str, str], bytearray]] = []
    header = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0][header["field"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = python_multipart.MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart raises its own exception types
        raise UploadError(400, "bad_request", f"malformed multipart body ({error})") from None
    chosen = None
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        if disposition.get(b"name") == b"image":
            chosen = data
            break
        if chosen is None and b"filename" in disposition:
            chosen = data
    if chosen is None:
        raise UploadError(400, "bad_request", "multipart body has no file part (send the image as the part 'image')")
    return bytes(chosen)


async def read_upload(request: Request, limits: Limits) -> bytes:
    """The uploaded image's bytes from a multipart form or a raw image body."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return multipart_file(await read_body(request, limits.max_bytes), content_type)
    if media in IMAGE_TYPES:
        return await read_body(request, limits.max_bytes)
    raise UploadError(
        415,
        "unsupported_media_type",
        f"content type {media or '(none)'!r}: send multipart/form-data with an 'image' file or a raw "
        f"body of type {', '.join(IMAGE_TYPES)}",
    )


def decode_upload(data: bytes, limits: Limits):
    """Pixels of an uploaded image (see :func:`training.images.decode_image`), or an UploadError."""
    try:
        return decode_image(data, max_pixels=limits.max_pixels)
    except ImageError as error:
        raise UploadError(STATUS_FOR_REASON[error.reason], error.reason, str(error)) from None
