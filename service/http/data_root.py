"""Slides by reference: a request names a file under the server's data root instead of uploading it.

A server deployed next to a slide store sets ``TESSERA_DATA_ROOT``; a job's ``path`` is then read
relative to it. Off unless set. Refused, each with a 4xx naming the reason:

* ``path_disabled`` (422): no data root is configured;
* ``absolute_path`` (422): the path is absolute (``/x``, ``C:\\x``, ``\\\\server\\x``);
* ``parent_path`` (422): the path has a ``..`` part;
* ``outside_root`` (422): the path resolves outside the root (a symlink leaving it);
* ``not_found`` (404): no such file under the root;
* ``not_a_slide`` (415): the file is not a whole-slide image (by name, or a TIFF without a pyramid).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from service.http.uploads import UploadError
from training.io.slides import is_slide_path

#: Environment variable naming the folder ``path=`` is relative to.
DATA_ROOT_ENV = "TESSERA_DATA_ROOT"
#: A Windows drive or UNC prefix.
WINDOWS_ABSOLUTE = re.compile(r"^([A-Za-z]:|\\\\|//)")


def data_root() -> Path | None:
    """The configured data root (resolved), or None when ``path=`` is off."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).resolve() if value else None


def resolve_data_path(relative: str, root: Path | None) -> Path:
    """The slide ``relative`` names under ``root``, or an :class:`UploadError` saying why not."""
    if root is None:
        raise UploadError(422, "path_disabled", f"path= is off on this server: set {DATA_ROOT_ENV} to allow it")
    text = relative.strip()
    if not text:
        raise UploadError(422, "invalid_option", "path is empty")
    if text.startswith(("/", "\\")) or WINDOWS_ABSOLUTE.match(text) or PureWindowsPath(text).is_absolute():
        raise UploadError(422, "absolute_path", f"path {relative!r} is absolute; give it relative to the data root")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise UploadError(422, "parent_path", f"path {relative!r} has a '..' part; paths stay inside the data root")
    resolved = (root / Path(*parts)).resolve()
    if not resolved.is_relative_to(root):
        raise UploadError(422, "outside_root", f"path {relative!r} leads outside the data root (a symbolic link)")
    if not resolved.is_file():
        raise UploadError(404, "not_found", f"path {relative!r}: no such file under the data root")
    if not is_slide_path(resolved):
        raise UploadError(415, "not_a_slide", f"path {relative!r} is not a whole-slide image (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF ...)")
    return resolved
