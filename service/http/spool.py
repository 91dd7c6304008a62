"""Uploads written to disk as they arrive: a job's image never sits whole in memory.

:func:`spool_upload` reads the request body chunk by chunk (as the client sends it; the body cap
of :class:`service.http.uploads.BodyLimit` applies) and writes the image to a file: the part
named ``image`` (else the first part with a file name) of a ``multipart/form-data`` body, or a raw
body with an image content type. Small text fields of the form (``format``) are returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.http.uploads import IMAGE_TYPES, UploadError

#: Bytes of a text field kept (anything longer is not a form option of ours).
MAX_FIELD_BYTES = 1024


class _PartWriter:
    """python-multipart callbacks: the chosen file part to ``target``, short fields to ``fields``."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.fields: dict[str, str] = {}
        self.header_field, self.header_value = b"", b""
        self.headers: dict[str, str] = {}
        self.kind: str | None = None  # "file", "field" or None (skipped)
        self.name = ""
        self.value = bytearray()
        self.file_written = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda d, s, e: setattr(self, "header_field", self.header_field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "header_value", self.header_value + d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.data,
            "on_part_end": self.end,
        }

    def begin(self) -> None:
        self.headers, self.kind, self.value = {}, None, bytearray()

    def header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value.decode("latin-1")
        self.header_field, self.header_value = b"", b""

    def headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get("content-disposition", ""))
        self.name = disposition.get(b"name", b"").decode("latin-1")
        is_file = self.name == "image" or b"filename" in disposition
        if is_file and not self.file_written:
            self.kind = "file"
            self.file_written = True
        elif not is_file:
            self.kind = "field"

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.kind == "file":
            self.target.write(data[start:end])
        elif self.kind == "field" and len(self.value) < MAX_FIELD_BYTES:
            self.value.extend(data[start:end])

    def end(self) -> None:
        if self.kind == "field":
            self.fields[self.name] = self.value.decode("utf-8", "replace")


async def spool_upload(request: Request, target: Path) -> tuple[int, dict[str, str]]:
    """Write the request's image to ``target`` as it arrives; (bytes written, form fields).

    Raises :class:`UploadError`: 415 for another content type, 400 for a malformed multipart body
    or one without a file part, or for a client that went away mid-body.
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media not in (*IMAGE_TYPES, "multipart/form-data"):
        raise UploadError(
            415, "unsupported_media_type",
            f"content type {media or '(none)'!r}: send multipart/form-data with an 'image' file or a raw body of type {', '.join(IMAGE_TYPES)}",
        )
    with target.open("wb") as file:
        try:
            if media != "multipart/form-data":
                async for chunk in request.stream():
                    file.write(chunk)
                return file.tell(), {}
            writer = await _spool_multipart(request, content_type, file)
        except ClientDisconnect:
            raise UploadError(400, "bad_request", "the client closed the connection before the body ended") from None
        if not writer.file_written:
            raise UploadError(400, "bad_request", "multipart body has no file part (send the image as the part 'image')")
        return file.tell(), writer.fields


async def _spool_multipart(request: Request, content_type: str, file: BinaryIO) -> _PartWriter:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_request", "multipart body without a boundary")
    writer = _PartWriter(file)
    try:
        parser = python_multipart.MultipartParser(boundary, writer.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except ClientDisconnect:
        raise
    except Exception as error:  # python-multipart raises its own exception types
        raise UploadError(400, "bad_request", f"malformed multipart body ({error})") from None
    return writer
