"""The ONE predictor: exact overlap-tile inference of images of any size, used by the CLI, the HTTP
service and the batch jobs.

    p = Predictor("model.safetensors")           # or None for the shipped model, or a Bundle
    p = Predictor(bundle, InferenceOptions(tile=572, tta="flips"))   # or the same as keywords
    pred = p.predict(pixels, probabilities=True)  # (H, W[, C]) uint8/uint16/float32 pixels
    pred.labels                                   # (H, W) uint8 (uint16 above 255 classes)
    pred.probabilities                            # (K, H, W) float32
    p.predict_to(open_image("slide.tif"), labels=open_sink("out.zarr", ...))   # streamed

How it works (see :mod:`training.inference.tiling` for the grid, :mod:`training.inference.options`
for the settings):

* normalisation statistics are computed ONCE per image (streamed for lazy sources) and applied
  to every tile window, never per tile;
* a reader thread reads, mirrors and normalises the windows of the next batch while the model
  runs on the current one (:mod:`training.inference.prefetch`: at most two batches ahead);
* each tile writes only its own output block to the sinks; nothing image-sized is held in
  float, and there is no count map (blocks abut, every pixel is computed once);
* optionally (``blend="gaussian"``) tiles overlap and are averaged with Gaussian weights in a
  rolling band of rows, for models where exactness cannot hold (see :mod:`training.inference.blending`);
* probabilities are the softmax over classes (sigmoid for a one-class model), averaged over the
  test-time augmentations if any (:mod:`training.inference.tta`; for a model trained with labels
  drawn off-centre, each view's probabilities are first moved back where the labels sit,
  :mod:`training.data.label_offset`, and tiles read that many more pixels of context); labels are their argmax (``p > 0.5`` for one
  class), or for a bundle with a calibrated decision threshold ``p1 >= threshold``
  (:mod:`training.inference.decision`; with test-time augmentation the threshold calibrated for it).

:meth:`Predictor.predict_whole` is the reference: ONE forward pass over the whole mirror-padded
image. For a valid-padded U-Net the tiled result equals it (tests: max |diff| <= 1e-5, identical
labels); for same-padded models tiles carry a measured halo and agree up to rare label flips.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.bundle import DEFAULT_BUNDLE, Bundle, BundleError, BundleInfo, load_bundle
from training.data.label_offset import correction_reach, shift_maps
from training.device import BatchRunner, autocast, autocast_dtype, prepare_model, resolve_device
from training.geometry import TileGeometry
from training.inference.autotile import AUTO_TILE_CANDIDATES, TileChoice, choose_tile
from training.inference.blending import BandBlender
from training.inference.decision import check_threshold, decide
from training.inference.halo_record import resolve_halo
from training.inference.options import AUTO_TILE, BUNDLE_THRESHOLD, InferenceOptions
from training.inference.prefetch import prefetch
from training.inference.skipping import TileSkip
from training.inference.tilefit import fit_tile
from training.inference.tiling import Box, Tile, TileGrid, check_region
from training.inference.tta import TTA_MODES, tta_caveat, tta_corrections
from training.io.images import ImageError, match_channels
from training.io.readers import fit_channels
from training.io.writers import (
    ArraySink,
    Sink,
    as_sink,
    encode_probabilities,
    label_dtype,
)
from training.mirror import ArrayLike2D, mirror_window
from training.normalization import Normalization

#: Tiles per forward pass when the options do not say. 1 on the CPU: oneDNN results differ in the
#: last bits with the batch size, and one tile per pass makes a region computed alone (a Dask block)
#: byte-identical to the same region of a whole run; big tiles keep the CPU busy anyway.
DEFAULT_BATCH = {"cpu": 1, "cuda": 8}

#: Layers whose output depends on the whole input's statistics: tiling cannot be exact with them.
PER_SAMPLE_NORMS = (torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)

Stats = tuple[np.ndarray, np.ndarray]
Progress = Callable[[int, int], None]


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict`: class indices and, if asked, class probabilities."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


class Predictor:
    """Tiled inference with one bundle. See the module docstring.

    Args:
        bundle_or_path: a :class:`~training.bundle.Bundle`, a bundle path, or ``None`` for the
            shipped default model.
        options: the :class:`~training.inference.options.InferenceOptions` (tile, batch size,
            TTA, blending, threshold, device); default: all defaults.
        **settings: fields of the options given as keywords instead (``tile=572, tta="flips"``),
            replacing those of ``options``.

    :attr:`options` holds the options resolved for this bundle and device (``tile="auto"``
    measured, the batch size chosen): a predictor built from them is identical to this one.
    """

    def __init__(
        self, bundle_or_path: Bundle | str | Path | None = None, options: InferenceOptions | None = None, **settings
    ) -> None:
        options = InferenceOptions.build(options, **settings)
        self.device = resolve_device(options.device)
        self.bundle = segmentation_bundle(bundle_or_path)
        warn_if_inexact(self.bundle.model, options.blend)
        self.model = prepare_model(self.bundle.model, self.device)
        self.transforms = TTA_MODES[options.tta]
        caveat = tta_caveat(self.info, options.tta)
        if caveat:
            warnings.warn(caveat, stacklevel=2)
        self.corrections = tta_corrections(self.info, self.transforms)
        #: The tile geometry: the model's (with the halo ``options.halo`` asks for), the context
        #: grown by what the TTA corrections read.
        self.geometry: TileGeometry = tile_geometry(self.info, options.halo, self.corrections)
        self.precision = options.precision
        autocast_dtype(self.device, self.precision)  # float16 on the CPU: ValueError here
        self.batch_size = options.batch_size or DEFAULT_BATCH.get(self.device.type, 2)
        self._runner = BatchRunner(self._forward, self.batch_size)
        self.tile = self._resolve_tile(options.tile, options.tile_rates)
        #: The options resolved: the tile size and batch size as numbers, or with a tile chosen per
        #: image the measured rates it is chosen from.
        if self.tile_rates is None:
            self.options = options.replace(tile=self.tile, batch_size=self.batch_size)
        else:
            self.options = options.replace(tile=AUTO_TILE, batch_size=self.batch_size, tile_rates=self.tile_rates)
        threshold = options.threshold
        if threshold == BUNDLE_THRESHOLD:
            threshold = self.info.tta_thresholds.get(options.tta, self.info.threshold)
        #: The decision threshold in use (a probability), or None for the argmax.
        self.threshold = check_threshold(threshold, self.num_classes)

    # ------------------------------------------------------------------ description
    @property
    def info(self) -> BundleInfo:
        return self.bundle.info

    @property
    def blend(self) -> str:
        return self.options.blend

    @property
    def overlap(self) -> float:
        return self.options.overlap

    @property
    def sigma_scale(self) -> float:
        return self.options.sigma_scale

    @property
    def num_classes(self) -> int:
        return int(self.info.spec.get("num_classes", len(self.info.classes)))

    def _resolve_tile(self, tile: int | str | None, rates: tuple[tuple[int, float], ...] | None) -> int:
        """The tile input size: checked valid when given; for ``"auto"`` (and ``None`` with a
        same-padded network) chosen per image from measured rates (:meth:`tile_for`), this
        being the fastest per output pixel; for ``None`` otherwise the bundle's default."""
        self.tile_rates: tuple[tuple[int, float], ...] | None = None
        if tile == AUTO_TILE or (tile is None and self.geometry.padding == "same"):
            if rates is None:
                rates = tuple(sorted(measured_rates(self).items()))
            self.tile_rates = rates
            throughput = dict(rates)
            self.tile_choice: TileChoice = TileChoice(size=max(throughput, key=throughput.get), throughput=throughput)
            return self.tile_choice.size
        if tile is None:
            tile = int(self.info.tile.get("input", 0)) or self.geometry.input_size_for(388)
        tile = int(tile)
        self.geometry.check_input(tile)
        self.geometry.tile_step(tile)
        return tile

    def tile_for(self, height: int, width: int) -> int:
        """The tile input size for a ``height x width`` image: :attr:`tile`, or with measured rates
        the size whose grid on this image is predicted fastest
        (:func:`training.inference.tilefit.fit_tile`: speed per output pixel and grid waste)."""
        if self.tile_rates is None:
            return self.tile
        return fit_tile(self.geometry, dict(self.tile_rates), height, width).size

    def grid(self, height: int, width: int) -> TileGrid:
        """The tile grid this predictor uses for a ``height x width`` image (overlapping tiles
        when blending)."""
        overlap = self.overlap if self.blend == "gaussian" else 0.0
        return TileGrid.plan(self.geometry, height, width, self.tile_for(height, width), overlap)

    # ------------------------------------------------------------------ public API
    def statistics(self, source: ArrayLike2D) -> Stats:
        """Normalisation (mean, std) for a whole image, computed once (streamed if lazy)."""
        return self.info.normalization.statistics(source)

    def predict(self, image: np.ndarray, probabilities: bool = False, progress: Progress | None = None) -> Prediction:
        """Segment an in-memory image ``(H, W)`` or ``(H, W, C)``, tile by tile."""
        source = self.check_image(image)
        height, width = source.shape[:2]
        return self.predict_region(source, 0, height, 0, width, None, probabilities, progress)

    def predict_region(
        self,
        source: ArrayLike2D,
        y0: int,
        y1: int,
        x0: int,
        x1: int,
        stats: Stats | None = None,
        probabilities: bool = False,
        progress: Progress | None = None,
        skip: TileSkip | None = None,
    ) -> Prediction:
        """Labels (and probabilities) of exactly the block ``[y0, y1) x [x0, x1)`` of ``source``.

        The tiles are those of the whole image's grid, so the block is identical to the same block
        of a whole-image run (what a Dask job computes per output chunk). ``stats`` are the whole
        image's normalisation statistics (:meth:`statistics`); computed here when ``None``.
        ``skip`` as for :meth:`predict_to`.
        """
        height, width = source.shape[:2]
        region = check_region((y0, y1, x0, x1), height, width)
        labels = np.empty((y1 - y0, x1 - x0), label_dtype(self.num_classes))
        probs = np.empty((self.num_classes, y1 - y0, x1 - x0), np.float32) if probabilities else None
        self._stream(
            source,
            stats if stats is not None else self.statistics(source),
            ArraySink(labels, (y0, x0)),
            ArraySink(probs, (y0, x0)) if probs is not None else None,
            region,
            progress,
            skip,
        )
        return Prediction(labels=labels, probabilities=probs)

    def predict_to(
        self,
        source: ArrayLike2D,
        labels=None,
        probabilities=None,
        progress: Progress | None = None,
        stats: Stats | None = None,
        skip: TileSkip | None = None,
    ) -> None:
        """Stream a (possibly lazy, larger than memory) image into sinks, tile by tile.

        ``labels`` / ``probabilities`` are :class:`~training.io.writers.Sink` objects or
        arrays with slice assignment of shape ``(H, W)`` / ``(K, H, W)``; a uint8 probability
        sink receives ``round(255 p)``, a float sink the value. Either may be ``None``.
        ``skip`` (:class:`~training.inference.skipping.TileSkip`): tiles it declines are not
        computed and write its background block; ``progress`` then counts computed tiles.
        """
        if labels is None and probabilities is None:
            raise ValueError("predict_to needs a labels or a probabilities sink")
        source = fit_channels(source, self.info.in_channels)
        check_source(source, self.info.in_channels)
        height, width = source.shape[:2]
        self._stream(
            source,
            stats if stats is not None else self.statistics(source),
            as_sink(labels),
            as_sink(probabilities),
            (0, height, 0, width),
            progress,
            skip,
        )

    def predict_whole(self, image: np.ndarray, probabilities: bool = True) -> Prediction:
        """The reference: ONE forward pass over the whole image, mirror-padded by the context on
        the top/left and to the next valid size on the bottom/right, then cropped."""
        source = self.check_image(image)
        height, width = source.shape[:2]
        mean, std = self.statistics(source)
        (wy0, wy1, wx0, wx1), (oy, ox) = self.grid(height, width).whole_window()
        pixels = Normalization.apply(mirror_window(source, wy0, wy1, wx0, wx1), mean, std)
        with torch.inference_mode():
            out = self._forward(torch.from_numpy(pixels[None]))[0, :, oy : oy + height, ox : ox + width]
        probs = out.numpy()
        return Prediction(
            labels=self._labels(probs),
            probabilities=np.ascontiguousarray(probs) if probabilities else None,
        )

    # ------------------------------------------------------------------ input checks
    def check_image(self, image: np.ndarray) -> np.ndarray:
        """An in-memory image fitted to the model's channels, or an ImageError saying why not."""
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
            raise ImageError(f"image shape {image.shape} is not a non-empty (H, W) or (H, W, C) array", "shape")
        return match_channels(image, self.info.in_channels)

    # ------------------------------------------------------------------ the engine
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, h, w)`` float32 on the CPU for a normalised batch, TTA averaged."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        total = None
        with torch.inference_mode(), autocast(self.device, self.precision):
            for view, (turns, flip) in enumerate(self.transforms):
                x = torch.rot90(batch.flip(-1) if flip else batch, turns, dims=(-2, -1))
                y = self._activation(self.model(x).float())
                y = torch.rot90(y, -turns, dims=(-2, -1))
                y = y.flip(-1) if flip else y
                if self.corrections:
                    y = shift_maps(y, self.corrections[view])
                total = y if total is None else total + y
        if len(self.transforms) > 1:
            total = total / len(self.transforms)
        return total.to("cpu").contiguous()

    @staticmethod
    def _activation(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def _labels(self, probs: np.ndarray) -> np.ndarray:
        """Class indices from ``(K, h, w)`` probabilities (:func:`training.inference.decision.decide`)."""
        return decide(probs, self.threshold)

    def _windows(self, source: ArrayLike2D, tiles: list[Tile], stats: Stats) -> np.ndarray:
        """Normalised input windows ``(N, C, tile_h, tile_w)`` float32 of ``tiles``."""
        mean, std = stats
        return np.stack([Normalization.apply(mirror_window(source, *t.window), mean, std) for t in tiles])

    def _batches(self, source: ArrayLike2D, tiles: list[Tile], stats: Stats) -> Iterator[tuple[list[Tile], np.ndarray]]:
        """Batches of tiles with their input windows, prepared by a reader thread ahead of use."""
        chunks = [tiles[i : i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]
        return prefetch(chunks, lambda chunk: self._windows(source, chunk, stats))

    def _stream(
        self,
        source: ArrayLike2D,
        stats: Stats,
        labels: Sink | None,
        probabilities: Sink | None,
        region: Box,
        progress: Progress | None,
        skip: TileSkip | None = None,
    ) -> None:
        """Run the tiles of ``region`` and write labels / probabilities block by block; tiles
        ``skip`` declines write its background block, in grid order among the computed ones."""
        height, width = source.shape[:2]
        grid = self.grid(height, width)
        tiles, declined = skip.split(grid.tiles(region)) if skip is not None else (list(grid.tiles(region)), [])
        skipped = collections.deque(declined)
        total = len(tiles)
        prob_dtype = probabilities.dtype if probabilities is not None else None

        def emit(box: Box, block: np.ndarray) -> None:
            if labels is not None:
                labels.write(box, self._labels(block))
            if probabilities is not None:
                probabilities.write(box, encode_probabilities(block, prob_dtype))

        blender = BandBlender(grid, region, self.num_classes, self.sigma_scale, emit) if self.blend == "gaussian" else None

        def put(tile: Tile, probs: np.ndarray) -> None:
            if blender is not None:
                blender.add(tile, probs)
                return
            y0, y1, x0, x1 = tile.output
            cy, cx = tile.crop
            emit(tile.output, probs[:, cy : cy + y1 - y0, cx : cx + x1 - x0])

        def put_skipped(before: tuple[int, int] | None) -> None:
            """Write the skipped tiles that come before grid position ``before`` (None: all)."""
            while skipped and (before is None or (skipped[0].row, skipped[0].col) < before):
                tile = skipped.popleft()
                y0, y1, x0, x1 = tile.output
                put(tile, skip.block(self.num_classes, tile.crop[0] + y1 - y0, tile.crop[1] + x1 - x0))

        done = 0
        for batch, windows in self._batches(source, tiles, stats):
            out = self._runner(torch.from_numpy(windows)).numpy()
            for tile, probs in zip(batch, out):
                put_skipped((tile.row, tile.col))
                put(tile, probs)
            done += len(batch)
            if progress is not None:
                progress(done, total)
        put_skipped(None)
        if blender is not None:
            blender.finish()




def check_source(source: ArrayLike2D, in_channels: int) -> None:
    """ImageError unless ``source`` is a non-empty ``(H, W[, C])`` image of ``in_channels`` channels."""
    shape = source.shape
    if len(shape) not in (2, 3) or shape[0] < 1 or shape[1] < 1:
        raise ImageError(f"image shape {tuple(shape)} is not a non-empty (H, W) or (H, W, C) array", "shape")
    have = 1 if len(shape) == 2 else shape[2]
    if have != in_channels:
        raise ImageError(f"image has {have} channel(s), the model takes {in_channels}", "channels")


def warn_if_inexact(model: torch.nn.Module, blend: str) -> None:
    """Warn when ``model`` normalises each input by its own statistics (tiles cannot be exact)."""
    if any(isinstance(m, PER_SAMPLE_NORMS) for m in model.modules()):
        warnings.warn(
            "this model normalises each input with its own statistics (instance/group norm): "
            "tiles see different statistics than a whole-image pass, so tiled results are not exact"
            + ("" if blend == "gaussian" else "; to hide the seams, blend overlapping tiles with "
               "blend='gaussian' (tessera predict --blend gaussian)"),
            stacklevel=3,
        )


def tile_geometry(info: BundleInfo, halo: str | int | None, corrections: list[tuple[float, float]] | None) -> TileGeometry:
    """The bundle's tile geometry with the halo ``halo`` asks for (a note on an override is
    warned), its context grown by the pixels the TTA ``corrections`` read."""
    geometry, note = resolve_halo(info, halo)
    if note:
        warnings.warn(note, stacklevel=3)
    reach = correction_reach(corrections or [])
    if reach:
        geometry = dataclasses.replace(geometry, halo=geometry.context + reach)
    return geometry

def segmentation_bundle(bundle_or_path: Bundle | str | Path | None) -> Bundle:
    """The bundle to predict with (loaded if a path; the shipped model for None), or ValueError
    when it is not a segmentation model."""
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path or DEFAULT_BUNDLE)
    if bundle.info.task != "segmentation" or bundle.info.geometry is None:
        raise BundleError(f"{bundle.path}: not a segmentation model (task {bundle.info.task!r})")
    return bundle


#: Tile rates measured in this process, per model: a predictor built again for the same model,
#: device, batch, geometry, views and precision reuses them (measuring takes seconds).
_RATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def measured_rates(predictor: Predictor) -> dict[int, float]:
    """Output pixels per second of each candidate tile size for this predictor
    (:func:`training.inference.autotile.choose_tile`), measured once per process and setting. A
    bundle whose halo was scanned (:mod:`training.inference.halo`) only gets tiles at least as
    large as the smallest scanned one: smaller tiles would agree less than measured."""
    key = (str(predictor.device), predictor.batch_size, predictor.geometry, len(predictor.transforms), predictor.precision)
    cache = _RATES.setdefault(predictor.model, {})
    if key not in cache:
        smallest = min(predictor.info.halo.get("tiles") or [0])
        candidates = [c for c in AUTO_TILE_CANDIDATES if c >= smallest] or [smallest]
        cache[key] = dict(choose_tile(predictor, candidates=candidates).throughput)
    return cache[key]
