"""Reading an uploaded image from an HTTP request, within limits, into pixels.

Uploads come as ``multipart/form-data`` (the first file part, or the part named ``image``) or as
a raw body with an image content type. Request bodies are capped by :class:`BodyLimit`, an ASGI
middleware in front of every route (over the cap: 413 before the rest is read, also for BentoML's
task routes, which read the whole body before any service code runs); the multipart form is
parsed here with python-multipart (Starlette's form parser turns a large part without a filename
into a server error); pixels are decoded by the one policy in :mod:`training.io.images`, which checks
the pixel limit on the header before decoding. :func:`open_upload` opens an uploaded file for the
tiler: a TIFF lazily, window by window, anything else decoded.

Problems raise :class:`UploadError` carrying the HTTP status and a short error name; the service
turns it into ``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from training.errors import TesseraError
from training.io.images import TIFF_MAGIC, ImageError, decode_image
from training.io.readers import open_image
from training.mirror import ArrayLike2D

#: HTTP status for each reason :class:`training.io.images.ImageError` gives.
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


class UploadError(TesseraError):
    """A request the service refuses: ``status`` (4xx), ``error`` (short name), ``detail``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Limits:
    """Upload limits: bytes of the request body and decoded pixels (height x width)."""

    max_bytes: int = 256 * 2**20
    max_pixels: int = 20_000 * 20_000


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 ``too_large`` before the rest is read.

    A declared ``Content-Length`` over the cap is refused before any byte is read; a streamed
    (chunked) body is counted as it arrives and refused as soon as it passes the cap, after which
    the application sees a disconnect and whatever it answers is dropped. It sits in front of every
    route because BentoML's task routes (``/segment_job/...``) store the whole body before any
    service code runs.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(send, f"request body of {int(declared):,} bytes is over the limit of {self.max_bytes:,}")
            return
        received, refused = 0, False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self.refuse(send, f"request body is over the limit of {self.max_bytes:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:  # after a refusal the application's disconnect error is expected
                raise

    @staticmethod
    async def refuse(send: Send, detail: str) -> None:
        body = json.dumps({"error": "too_large", "detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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


async def read_upload(request: Request) -> bytes:
    """The uploaded image's bytes from a multipart form or a raw image body (capped by :class:`BodyLimit`)."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return multipart_file(await request.body(), content_type)
    if media in IMAGE_TYPES:
        return await request.body()
    raise UploadError(
        415,
        "unsupported_media_type",
        f"content type {media or '(none)'!r}: send multipart/form-data with an 'image' file or a raw "
        f"body of type {', '.join(IMAGE_TYPES)}",
    )


def decode_upload(data: bytes, limits: Limits):
    """Pixels of an uploaded image (see :func:`training.io.images.decode_image`), or an UploadError."""
    try:
        return decode_image(data, max_pixels=limits.max_pixels)
    except ImageError as error:
        raise UploadError(STATUS_FOR_REASON[error.reason], error.reason, str(error)) from None


def open_upload(path: Path, limits: Limits) -> ArrayLike2D:
    """An uploaded image file as a tiler source, or an UploadError.

    The kind comes from the file's first bytes, never from the client's file name: a TIFF/BigTIFF
    is opened lazily (read window by window, so a huge upload is never decoded whole); anything
    else is decoded in memory (PNG and JPEG cannot be read by window). The pixel limit is checked
    on the header. The file is renamed with the suffix :func:`training.io.readers.open_image` reads
    by, and the server's temporary path never appears in an error.
    """
    with path.open("rb") as file:
        magic = file.read(len(TIFF_MAGIC[0]))
    named = path.rename(path.with_name(f"upload{'.tif' if magic in TIFF_MAGIC else '.bin'}"))
    try:
        return open_image(named, max_pixels=limits.max_pixels)
    except ImageError as error:
        detail = str(error).replace(str(named), "upload")
        raise UploadError(STATUS_FOR_REASON[error.reason], error.reason, detail) from None
