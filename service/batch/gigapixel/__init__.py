"""Gigapixel jobs: one TIFF/BigTIFF or zarr image larger than memory -> OME-Zarr (zarr v3, NGFF 0.5).

Output ``DST/NAME.zarr`` (``NAME`` = the input's name without its suffix), an OME-Zarr label image:

* ``0``, ``1``, ... -- the label map (class indices, uint8; uint16 above 256 classes) and its
  pyramid, each level half the previous one (nearest sample: class indices are never averaged),
  down to one chunk; axes ``y, x``; ``image-label`` metadata names the classes and their colours;
* ``probabilities/0``, ``probabilities/1``, ... with ``probabilities=True`` -- ``(K, H, W)``
  uint8 ``round(255 p)``, axes ``c, y, x``, same pyramid rule;
* attributes ``tessera``: the bundle hash, tile, TTA, blending, classes, chunk and the job key.

With ``tiff=True`` the full-resolution label map is also written as a tiled BigTIFF
``DST/NAME.tif`` (streamed in row bands; temporary name, then rename).

The computation is ``dask.array.map_overlap`` over the lazily read input:

* the output is chunked on the predictor's tile grid (a chunk is a whole number of tile steps,
  about 1024 pixels, ``chunk=``), and the input array has the same chunks;
* the input is mirror-padded beforehand with Tessera's one mirror (:mod:`training.mirror`,
  numpy ``reflect``), lazily: :class:`~service.batch.gigapixel.graph.PaddedInput` reads every
  chunk through :func:`~training.mirror.mirror_window`. map_overlap then runs with ``boundary="none"``. Dask's
  own ``boundary="reflect"`` is numpy's ``symmetric`` (the edge pixel repeated): it would change
  every tile that reaches past the image border;
* ``depth`` per axis is ``(before, after)`` from :func:`~service.batch.gigapixel.plan.overlap_plan`:
  ``before`` is the model's context (the margin of a valid U-Net, the measured halo of a
  same-padded smp model) and ``after`` the context plus the part of a tile's output beyond its
  step, which the step drops to stay on the pooling stride. With ``blend="gaussian"`` tiles
  overlap: ``before`` grows by the whole steps back to the first tile that still reaches the
  chunk, ``after`` by the part of a tile's span its neighbour repeats. The first and last chunks
  carry the padding; the last one up to the last tile row's window, which may reach past the
  image by more than the depth;
* :func:`~service.batch.gigapixel.graph.segment_block` gets a chunk plus its halo and runs
  :meth:`~training.inference.predictor.Predictor.predict_region` on it through a
  :class:`~training.mirror.PaddedImage`: the tiles are those of the whole image's grid (same
  stride phase, same tile sizes), their windows plain slices of the block, normalised with the
  whole image's statistics (computed once, streamed, before the run); blended tiles are
  averaged in the same order as in a whole run. Every chunk is therefore byte-identical to the
  same block of ``tessera predict`` on the whole image, for valid and same padding, crop-only or
  blended, whichever process computes it;
* :func:`~service.batch.gigapixel.graph.write_block` (a ``map_blocks`` over the map_overlap
  result) writes a chunk into the partial output, then its done-marker.

Only the chunks without a marker are computed, 4 x 4 chunks at a time
(:data:`~service.batch.gigapixel.graph.WINDOW`): map_overlap is applied to that window of the padded input plus its ring of neighbour chunks
(dask's overlap reads only direct neighbours), so the task graph and the pixels in flight stay
bounded whatever the image size (dask materialises an overlap graph whole: about 12 tasks per
chunk), and each input chunk is read about ``(WINDOW + 2)**2 / WINDOW**2`` times. The runner
(:mod:`service.batch.scheduler`) computes the windows here with dask's synchronous scheduler or on
a Dask cluster, where the model is loaded once per worker.

Resuming: while running, the output lives in ``DST/.NAME.zarr.partial``. A block writes its
chunk(s) and then a done-marker file (``.tessera-done/ROW.COL``). zarr 3 does not store chunks
equal to the fill value, so a missing chunk cannot mean "not done": only the marker does. A
rerun with the same job key (:mod:`service.batch.jobkey`: bundle, tile, TTA, blending,
threshold, chunking, probabilities, input size and modification time) recomputes exactly the
chunks without a marker; a different key starts over. When all chunks are done the pyramid and
metadata are written, markers removed, and the folder renamed into place.

Modules: :mod:`~service.batch.gigapixel.plan` (depth, padding, chunking),
:mod:`~service.batch.gigapixel.state` (names, key, job file, done-markers),
:mod:`~service.batch.gigapixel.graph` (the dask task graph and its block functions),
:mod:`~training.io.omezarr` (pyramid, metadata, BigTIFF) and
:mod:`~service.batch.gigapixel.run` (the job).
"""

from service.batch.gigapixel.run import GigapixelReport, run_gigapixel
from service.batch.gigapixel.state import is_gigapixel_source

__all__ = ["GigapixelReport", "is_gigapixel_source", "run_gigapixel"]
