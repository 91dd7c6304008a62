"""What a gigapixel job keeps on disk between runs: its names, key, job file and done-markers.

While running, the output lives in ``DST/.NAME.zarr.partial`` with the job file
(:data:`JOB_FILE`: the job key and the whole image's normalisation statistics) and one
done-marker per finished chunk (``.tessera-done/ROW.COL``). zarr 3 does not store chunks equal to
the fill value, so a missing chunk cannot mean "not done": only the marker does. A rerun with the
same key (:func:`gigapixel_key`) resumes the partial output; any other key starts it over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from service.batch.files import atomic_write
from service.batch.gigapixel.plan import GigapixelJob, OverlapPlan
from service.batch.jobkey import job_key
from service.batch.scheduler import PredictorSpec
from training.io.images import TIFF_SUFFIXES
from training.io.omezarr import PROBABILITIES, create_label_group
from training.io.readers import ZARR_SUFFIXES
from training.io.slides import SLIDE_SUFFIXES
from training.io.writers import label_dtype

#: Name suffix of the folder an unfinished output lives in.
PARTIAL_SUFFIX = ".partial"
#: Folder of done-markers inside the partial output.
DONE_FOLDER = ".tessera-done"
#: File holding the job's key and normalisation statistics inside the partial output.
JOB_FILE = ".tessera-job.json"
#: Suffixes of inputs a gigapixel job takes.
GIGAPIXEL_SUFFIXES = TIFF_SUFFIXES + ZARR_SUFFIXES


def is_gigapixel_source(src: str | Path) -> bool:
    """True for an existing TIFF/BigTIFF file, zarr store or whole-slide image (what a gigapixel job takes)."""
    path = Path(src)
    return path.exists() and (path.suffix.lower() in GIGAPIXEL_SUFFIXES or path.suffix.lower() in SLIDE_SUFFIXES)


def output_stem(src: Path) -> str:
    """The input's name without its image suffixes (``slide.ome.tif`` -> ``slide``)."""
    name = src.name
    for suffix in (*GIGAPIXEL_SUFFIXES, *SLIDE_SUFFIXES, ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or "image"


def source_fingerprint(path: Path) -> dict:
    """Identity of the input for resuming: size and modification time (of zarr metadata for a store)."""
    files = [path] if path.is_file() else sorted(path.rglob("zarr.json"))
    return {"path": str(path.resolve()), "files": [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def gigapixel_key(spec: PredictorSpec, src: Path, shape: tuple[int, int], chunks: tuple[int, int], probabilities: bool,
                  **extra) -> str:
    """The job key (:func:`service.batch.jobkey.job_key`) over the input, its size and the chunking
    (and ``extra`` fields: a slide's resolution and tissue)."""
    return job_key(spec, shape=list(shape), chunk=list(chunks), probabilities=probabilities, source=source_fingerprint(src),
                   **extra)


def marker(partial: Path, index: tuple[int, int]) -> Path:
    """The done-marker of chunk ``index`` (row, column) in the partial output."""
    return partial / DONE_FOLDER / f"{index[0]}.{index[1]}"


def is_complete(output: Path, key: str) -> bool:
    """True when ``output`` is a finished OME-Zarr of this very job."""
    metadata = output / "zarr.json"
    if not metadata.is_file():
        return False
    try:
        attributes = json.loads(metadata.read_text()).get("attributes", {})
    except (OSError, json.JSONDecodeError):
        return False
    return attributes.get("tessera", {}).get("job") == key


def saved_statistics(partial: Path, key: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalisation statistics an unfinished output of this job saved, or None."""
    job_file = partial / JOB_FILE
    if not job_file.is_file():
        return None
    try:
        saved = json.loads(job_file.read_text())
        if saved.get("job") == key:
            return tuple(saved["mean"]), tuple(saved["std"])
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    return None


def open_partial(partial: Path, key: str, src: Path, source, predictor, plan: OverlapPlan, chunks: tuple[int, int],
                 probabilities: bool, max_pixels: int | None, statistics=None) -> GigapixelJob:
    """The job of an unfinished output with this key (resumed), or a fresh partial output.
    ``statistics``: a function giving the normalisation statistics (default: the predictor's of ``source``)."""
    shape = tuple(int(n) for n in source.shape)
    classes = predictor.num_classes
    stats = saved_statistics(partial, key)
    if stats is None:
        if partial.exists():
            shutil.rmtree(partial)
        mean, std = statistics() if statistics is not None else predictor.statistics(source)
        stats = (tuple(float(v) for v in np.atleast_1d(mean)), tuple(float(v) for v in np.atleast_1d(std)))
        create_partial(partial, shape[:2], chunks, classes, probabilities)
        atomic_write(partial / JOB_FILE, json.dumps({"job": key, "mean": stats[0], "std": stats[1]}).encode())
    return GigapixelJob(
        source=str(src.resolve()), partial=str(partial), shape=shape, dtype=str(np.dtype(source.dtype)),
        chunk=chunks, plan=plan, classes=classes, probabilities=probabilities, mean=stats[0], std=stats[1],
        max_pixels=max_pixels,
    )


def create_partial(partial: Path, shape: tuple[int, int], chunks: tuple[int, int], classes: int, probabilities: bool) -> None:
    """An empty partial output: the full-resolution label array (and probabilities), no markers."""

    group = create_label_group(partial, shape, chunks, label_dtype(classes))
    if probabilities:
        group.create_group(PROBABILITIES).create_array(
            "0", shape=(classes, *shape), chunks=(classes, *chunks), dtype=np.uint8, fill_value=0,
            dimension_names=("c", "y", "x"))
    (partial / DONE_FOLDER).mkdir()
