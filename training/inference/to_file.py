"""Predicting into files: labels (and probabilities) streamed tile by tile into file sinks.

    predict_to_file(predictor, open_image("slide.tif"), "labels.zarr", probabilities="probs.zarr")

The one way an image becomes label files, for ``tessera predict`` and the HTTP service's
asynchronous jobs: the sinks of :func:`training.io.writers.open_sink` (the format from the
suffix; zarr chunked on the tile grid, with the class names and the stored values as
attributes), written by :meth:`~training.inference.predictor.Predictor.predict_to`, each moved
into place only when complete. Memory is bounded by the tile batch and the sinks' row bands.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from training.inference.predictor import Predictor, Progress, Stats
from training.inference.skipping import TileSkip
from training.inference.tiling import TileGrid
from training.io.omezarr import LabelImageSink
from training.io.readers import fit_channels
from training.io.writers import (
    PROBABILITY_DTYPES,
    ZARR_SUFFIX,
    Sink,
    TeeSink,
    label_dtype,
    open_sink,
)
from training.mirror import ArrayLike2D


def predict_to_file(
    predictor: Predictor,
    source: ArrayLike2D,
    labels: str | Path,
    *,
    probabilities: str | Path | None = None,
    probability_dtype: str = "uint8",
    attributes: dict | None = None,
    also: Sink | None = None,
    progress: Progress | None = None,
    stats: Stats | None = None,
    skip: TileSkip | None = None,
    label_image: bool = False,
    mpp: float | None = None,
) -> TileGrid:
    """Segment ``source`` into the label file ``labels`` (class indices) and, if given, the
    probability file ``probabilities`` (``(K, H, W)`` as ``probability_dtype``: ``uint8`` =
    ``round(255 p)``, ``float16``, ``float32``). ``attributes`` are added to the zarr attributes;
    ``also`` receives the labels too (e.g. an in-memory copy for an overlay); ``stats`` and ``skip``
    go to :meth:`~training.inference.predictor.Predictor.predict_to` (a slide's statistics and
    tiles without tissue). ``label_image``: ``.zarr`` labels become an OME-Zarr label image
    (:class:`~training.io.omezarr.LabelImageSink`: pyramid, class names, axes in micrometres at
    ``mpp``). Returns the grid."""
    source = fit_channels(source, predictor.info.in_channels)
    height, width = source.shape[:2]
    grid = predictor.grid(height, width)
    chunk = (grid.step_h, grid.step_w)
    described = {"classes": predictor.info.classes, **(attributes or {})}
    classes = predictor.num_classes
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(label_sink(labels, (height, width), label_dtype(classes), chunk,
                                              {**described, "values": "class index"}, label_image, mpp))
        if also is not None:
            sink = TeeSink(sink, also)
        probability_sink = None
        if probabilities is not None:
            scale = 1 / 255 if probability_dtype == "uint8" else 1.0
            probability_sink = stack.enter_context(open_sink(
                probabilities, (classes, height, width), PROBABILITY_DTYPES[probability_dtype], chunk,
                {**described, "values": f"probability as {probability_dtype}", "scale": scale}))
        predictor.predict_to(source, labels=sink, probabilities=probability_sink, progress=progress, stats=stats, skip=skip)
    return grid


def label_sink(path: str | Path, shape: tuple[int, int], dtype, chunk: tuple[int, int], attributes: dict,
               label_image: bool, mpp: float | None) -> Sink:
    """The labels' sink: an OME-Zarr label image for ``.zarr`` when ``label_image``, else by suffix."""
    path = Path(path)
    if label_image and path.suffix.lower() == ZARR_SUFFIX:
        classes = [str(name) for name in attributes["classes"]]
        return LabelImageSink(path, shape, dtype, chunk, classes, attributes, mpp)
    return open_sink(path, shape, dtype, chunk, attributes)
