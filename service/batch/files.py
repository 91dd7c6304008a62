"""Files of a batch job: safe output names, atomic writes, leftover temporaries, the DST lock.

* Output names come from input names relative to SRC (or from a listing) and may never leave DST:
  absolute names, drive names, ``..`` components and names reaching out through a symbolic link
  inside DST are refused (:class:`UnsafeNameError`).
* Every output is written to a hidden temporary name next to it (the project's
  :func:`training.io.writers.temporary_path`: ``.NAME.XXXXXXXX.tmp``) and renamed into place, so a
  killed job never leaves a partial file under an output name. A killed job can leave such
  temporaries behind; the next job on the same DST removes them (:func:`sweep_temporaries`), and
  so does a gigapixel job before it finishes its output (a Dask worker killed mid-write leaves
  zarr's own temporary, ``CHUNK.<32 hex>.partial``, beside the chunk its retry rewrites).
* One job at a time per DST: :func:`job_lock` holds an advisory ``flock`` that the kernel
  releases when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from training.errors import TesseraError
from training.io.writers import move_into_place, remove, temporary_path

#: Names of the temporaries :func:`training.io.writers.temporary_path` makes (mkstemp's 8 letters).
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: Names of the temporaries zarr 3's LocalStore writes a key through (``uuid4().hex``, then renamed).
ZARR_TEMPORARY_NAME = re.compile(r"^.+\.[0-9a-f]{32}\.partial$")
#: The lock file a job holds in DST.
LOCK_NAME = ".tessera-batch.lock"


class UnsafeNameError(TesseraError):
    """An output name that would be written outside DST."""


def safe_relative(name: str) -> PurePosixPath:
    """``name`` as a relative POSIX path that stays inside its folder, or UnsafeNameError."""
    text = str(name)
    if not text or "\x00" in text:
        raise UnsafeNameError(f"{name!r}: empty or invalid name")
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(text).drive or PureWindowsPath(text).is_absolute():
        raise UnsafeNameError(f"{name!r}: absolute names are refused (outputs must stay inside DST)")
    if ".." in path.parts:
        raise UnsafeNameError(f"{name!r}: '..' in a name is refused (outputs must stay inside DST)")
    if path.parts in ((), (".",)):
        raise UnsafeNameError(f"{name!r}: not a file name")
    return path


def inside(root: Path, relative: PurePosixPath) -> Path:
    """``root / relative``, checked to resolve inside ``root`` (symbolic links followed)."""
    path = root / Path(*relative.parts)
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise UnsafeNameError(f"{relative}: resolves outside {root} (through a symbolic link)")
    return path


def atomic_write(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary name and a rename; returns its SHA-256."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        move_into_place(temporary, path)
    finally:
        remove(temporary)
    return hashlib.sha256(data).hexdigest()


def sweep_temporaries(root: Path) -> list[Path]:
    """Remove temporaries left in ``root`` (recursively) by a killed job; returns what went."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder, directories, files in os.walk(root):
        for name in [*files, *directories]:
            if TEMPORARY_NAME.match(name) or (name in files and ZARR_TEMPORARY_NAME.match(name)):
                path = Path(folder) / name
                remove(path)
                removed.append(path)
        directories[:] = [d for d in directories if not TEMPORARY_NAME.match(d)]
    return removed


@contextlib.contextmanager
def job_lock(root: Path) -> Iterator[None]:
    """Hold DST's job lock for the ``with`` block; ValueError if another job holds it."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TesseraError(f"{root}: another batch job is writing to this folder") from None
        yield
    finally:
        handle.close()
