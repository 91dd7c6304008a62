"""Folder jobs: segment every image of a folder, a glob or a listing into DST, resumably.

SRC is one of

* a folder: every PNG/JPEG/TIFF/BMP below it (hidden files and DST itself skipped);
* a glob pattern (``'scans/*/slice_*.tif'``): names are relative to the pattern's fixed prefix;
* a listing (``.txt`` / ``.lst``): one image path per line, relative to the listing's folder
  (``#`` comments and blank lines ignored).

Each input ``NAME.EXT`` gets, under DST and the same relative folder:

* ``NAME.png`` -- the label map, class indices (uint8; 16-bit PNG above 256 classes);
* ``NAME.overlay.png`` with ``overlay=True`` -- the labels drawn over the image;
* ``NAME.probabilities.tif`` with ``probabilities=True`` -- ``(K, H, W)`` uint8 ``round(255 p)``.

Names that would leave DST (absolute, ``..``) are refused and recorded; two inputs mapping to one
output (``a.png`` and ``a.jpg``) are refused before anything runs. Every output is written to a
temporary name and renamed; the manifest (:mod:`service.batch.manifest`) records each input as it
finishes, so a rerun redoes exactly the inputs without a valid ``ok`` record. An input that cannot
be read or segmented is recorded as ``failed`` with its error and the job goes on; the report's
``ok`` is false (the CLI exits 1) if any input failed or was refused.
"""

from __future__ import annotations

import glob
import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile

from service.batch.files import (
    UnsafeNameError,
    atomic_write,
    inside,
    job_lock,
    safe_relative,
    sweep_temporaries,
)
from service.batch.jobkey import job_key
from service.batch.manifest import MANIFEST_NAME, Manifest, utc_now
from service.batch.scheduler import PredictorSpec, predictor_for
from training.bundle import file_sha256
from training.errors import OptionError, TesseraError
from training.io.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError
from training.io.overlay import foreground_classes, overlay
from training.io.readers import open_image
from training.io.writers import encode_png, encode_probabilities

#: Suffixes of listing files (one image path per line).
LISTING_SUFFIXES = (".txt", ".lst")
#: Characters that make SRC a glob pattern.
GLOB_CHARACTERS = "*?["
#: Output kinds and the name each gets from the input's relative name without suffix.
OUTPUT_SUFFIXES = {"labels": ".png", "overlay": ".overlay.png", "probabilities": ".probabilities.tif"}

#: ``progress(done, total, record)`` after each input (skipped ones included).
Progress = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class FolderOptions:
    """What to write besides the labels, and the decoding pixel limit."""

    overlay: bool = False
    probabilities: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def kinds(self) -> tuple[str, ...]:
        return ("labels",) + (("overlay",) if self.overlay else ()) + (("probabilities",) if self.probabilities else ())


@dataclass(frozen=True)
class FolderItem:
    """One input: its relative name, where it is, and its relative output names by kind."""

    name: str
    source: str
    outputs: dict[str, str]


@dataclass
class FolderReport:
    """What a folder job did. ``ok`` is false when any input failed or was refused."""

    src: str
    dst: str
    scheduler: str
    total: int = 0
    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    refused: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures: list[dict] = field(default_factory=list)
    kind: str = "folder"

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.refused == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------------- planning
def is_listing(src: str) -> bool:
    return Path(src).suffix.lower() in LISTING_SUFFIXES and Path(src).is_file()


def list_inputs(src: str, dst: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """``([(relative name, path)], [(name, why refused)])`` for SRC, sorted by name."""
    if is_listing(src):
        return _from_listing(Path(src))
    if any(c in src for c in GLOB_CHARACTERS):
        base = Path(_glob_base(src))
        dst_resolved = dst.resolve()
        found = [Path(p) for p in glob.glob(src, recursive=True)]
        found = [p for p in found if _is_image(p) and not p.resolve().is_relative_to(dst_resolved)]
        pairs = [(os.path.relpath(p, base).replace(os.sep, "/"), p) for p in found]
        return _checked(pairs)
    root = Path(src)
    if not root.is_dir():
        raise OptionError(f"{src}: not a folder, a glob pattern, a listing (.txt) or an existing image")
    pairs = []
    dst_resolved = dst.resolve()
    for folder, directories, files in os.walk(root):
        here = Path(folder)
        directories[:] = sorted(
            d for d in directories if not d.startswith(".") and (here / d).resolve() != dst_resolved
        )
        pairs += [(str((here / f).relative_to(root)).replace(os.sep, "/"), here / f) for f in files if not f.startswith(".") and _is_image(here / f)]
    return _checked(pairs)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(c in part for c in GLOB_CHARACTERS):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _from_listing(listing: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    pairs = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            pairs.append((name, listing.parent / name))
    return _checked(pairs)


def _checked(pairs: list[tuple[str, Path]]) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Split into safe names and refused ones (absolute, ``..``); sorted, duplicates removed."""
    safe: dict[str, Path] = {}
    refused: list[tuple[str, str]] = []
    for name, path in pairs:
        try:
            safe_relative(name)
        except UnsafeNameError as error:
            refused.append((name, str(error)))
            continue
        safe[name] = path
    return sorted(safe.items()), sorted(refused)


def output_names(name: str, options: FolderOptions) -> dict[str, str]:
    """Relative output names by kind for the input's relative ``name``."""
    stem = PurePosixPath(name).with_suffix("")
    return {kind: f"{stem}{OUTPUT_SUFFIXES[kind]}" for kind in options.kinds()}


def plan_items(inputs: list[tuple[str, Path]], dst: Path, options: FolderOptions) -> tuple[list[FolderItem], list[tuple[str, str]]]:
    """Items with output names checked inside DST (names reaching out through a symbolic link in
    DST are refused, per input); two inputs writing one output is an error before anything runs."""
    items: list[FolderItem] = []
    refused: list[tuple[str, str]] = []
    owners: dict[str, str] = {}
    for name, path in inputs:
        outputs = output_names(name, options)
        for output in outputs.values():
            if output in owners:
                raise TesseraError(f"{owners[output]!r} and {name!r} would both write {output!r}; rename one of them")
            owners[output] = name
        try:
            for output in outputs.values():
                inside(dst, safe_relative(output))
        except UnsafeNameError as error:
            refused.append((name, str(error)))
            continue
        items.append(FolderItem(name=name, source=str(path.resolve()), outputs=outputs))
    return items, refused


# ---------------------------------------------------------------------------------- the task
def segment_file(item: FolderItem, spec: PredictorSpec, options: FolderOptions, dst: str, job: str) -> dict:
    """Segment one input and write its outputs atomically; a manifest record (never raises for
    a bad input: the error is recorded, the job goes on)."""
    started = time.perf_counter()
    record = {"input": item.name, "output": item.outputs["labels"], "job": job, "error": None, "reason": None}
    try:
        root = Path(dst)
        record["input_sha256"] = file_sha256(item.source)
        source = open_image(item.source, max_pixels=options.max_pixels)
        pixels = source if isinstance(source, np.ndarray) else np.asarray(source[:, :])
        predictor = predictor_for(spec)
        prediction = predictor.predict(pixels, probabilities=options.probabilities)
        encoded = {"labels": encode_png(prediction.labels)}
        if options.overlay:
            encoded["overlay"] = encode_png(overlay(pixels, prediction.labels, foreground_classes(predictor.info)))
        if options.probabilities:
            encoded["probabilities"] = encode_tiff(encode_probabilities(prediction.probabilities, np.uint8))
        record["outputs"] = {
            kind: {"path": item.outputs[kind], "sha256": atomic_write(inside(root, safe_relative(item.outputs[kind])), data)}
            for kind, data in encoded.items()
        }
        record["status"] = "ok"
    except (ImageError, ValueError, OSError) as error:
        record.update(status="failed", error=str(error), reason=getattr(error, "reason", type(error).__name__))
    except Exception as error:  # any other per-image failure is recorded; the job goes on
        record.update(status="failed", error=f"{type(error).__name__}: {error}", reason="error")
    record["seconds"] = round(time.perf_counter() - started, 4)
    record["finished"] = utc_now()
    return record


def encode_tiff(planes: np.ndarray) -> bytes:
    """``(K, H, W)`` planes as zlib-compressed TIFF bytes (deterministic: no date stored)."""

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, photometric="minisblack", compression="zlib", metadata={"axes": "CYX"})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- the job
def run_folder(
    src: str,
    dst: str | Path,
    spec: PredictorSpec,
    runner,
    options: FolderOptions = FolderOptions(),
    progress: Progress | None = None,
) -> FolderReport:
    """Run a folder job with ``runner`` (:func:`service.batch.scheduler.open_runner`)."""
    started = time.perf_counter()
    root = Path(dst)
    report = FolderReport(src=str(src), dst=str(root), scheduler=runner.description)
    with job_lock(root):
        sweep_temporaries(root)
        inputs, refused = list_inputs(str(src), root)
        items, unsafe = plan_items(inputs, root, options)
        refused = sorted(refused + unsafe)
        manifest = Manifest(root / MANIFEST_NAME)
        report.manifest = str(manifest.path)
        key = job_key(spec, outputs=options.kinds())
        report.total = len(items) + len(refused)
        done = 0

        def account(record: dict, skipped: bool = False) -> None:
            nonlocal done
            done += 1
            if skipped:
                report.skipped += 1
            elif record["status"] == "ok":
                report.succeeded += 1
            else:
                report.failed += record["status"] == "failed"
                report.refused += record["status"] == "refused"
                report.failures.append({"input": record["input"], "status": record["status"], "error": record["error"]})
            if progress is not None:
                progress(done, report.total, record)

        for name, why in refused:
            record = {"input": name, "output": None, "status": "refused", "error": why, "reason": "unsafe_name", "job": key}
            manifest.append(record)
            account(record)
        pending = []
        for item in items:
            record = None
            if item.name in manifest.records:  # hash the input only when there is a record to verify
                record = manifest.finished(item.name, key, _sha_or_none(item.source), root)
            if record is not None:
                account(record, skipped=True)
            else:
                pending.append(item)
        for record in runner.map(segment_file, pending, spec=spec, options=options, dst=str(root), job=key):
            manifest.append(record)
            account(record)
        manifest.compact([name for name, _ in refused] + [item.name for item in items])
        sweep_temporaries(root)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _sha_or_none(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None
