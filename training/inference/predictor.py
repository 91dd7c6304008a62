"""The ONE predictor: exact overlap-tile inference of images of any size, used by the CLI, the HTTP
service and the batch jobs.

    p = Predictor("model.safetensors")           # or None for the shipped model, or a Bundle
    pred = p.predict(pixels, probabilities=True)  # (H, W[, C]) uint8/uint16/float32 pixels
    pred.labels                                   # (H, W) uint8 (uint16 above 255 classes)
    pred.probabilities                            # (K, H, W) float32
    p.predict_to(open_image("slide.tif"), labels=open_sink("out.zarr", ...))   # streamed

How it works (see :mod:`training.inference.tiling` for the grid):

* normalisation statistics are computed ONCE per image (streamed for lazy sources) and applied
  to every tile window, never per tile;
* a reader thread reads, mirrors and normalises the windows of the next batch while the model
  runs on the current one (bounded queue: at most two batches in memory);
* each tile writes only its own output block to the sinks; nothing image-sized is held in
  float, and there is no count map (blocks abut, every pixel is computed once);
* optionally (``blend="gaussian"``) tiles overlap and are averaged with Gaussian weights in a
  rolling band of rows, for models where exactness cannot hold (see :mod:`training.inference.blending`);
* probabilities are the softmax over classes (sigmoid for a one-class model), averaged over the
  test-time augmentations if any (for a model trained with labels drawn off-centre, each view's
  probabilities are first moved back where the labels sit, :mod:`training.data.label_offset`, and
  tiles read that many more pixels of context); labels are their argmax (``p > 0.5`` for one
  class), or for a bundle with a calibrated decision threshold ``p1 >= threshold``
  (:mod:`training.inference.decision`; with test-time augmentation the threshold calibrated for it).

:meth:`Predictor.predict_whole` is the reference: ONE forward pass over the whole mirror-padded
image. For a valid-padded U-Net the tiled result equals it (tests: max |diff| <= 1e-5, identical
labels); for same-padded models tiles carry a measured halo and agree up to rare label flips.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.inference.blending import DEFAULT_OVERLAP, DEFAULT_SIGMA_SCALE, BandBlender, check_blend
from training.bundle import DEFAULT_BUNDLE, Bundle, BundleInfo, load_bundle
from training.inference.decision import check_threshold, decide
from training.device import BatchRunner, autocast, prepare_model, resolve_device
from training.geometry import TileGeometry
from training.io.images import ImageError, channel_count
from training.data.label_offset import bundle_label_offset, correction_reach, shift_maps, view_correction
from training.mirror import ArrayLike2D, mirror_window
from training.normalization import Normalization
from training.io.readers import fit_channels
from training.inference.skipping import TileSkip
from training.inference.tiling import Box, Tile, TileGrid, check_region
from training.io.writers import ArraySink, Sink, as_sink, encode_probabilities, label_dtype

#: Tiles per forward pass when the caller does not say. 1 on the CPU: oneDNN results differ in the
#: last bits with the batch size, and one tile per pass makes a region computed alone (a Dask block)
#: byte-identical to the same region of a whole run; big tiles keep the CPU busy anyway.
DEFAULT_BATCH = {"cpu": 1, "cuda": 8}
#: Batches the reader thread may prepare ahead of the model.
PREFETCH_BATCHES = 2
#: Test-time augmentations: name -> list of (rotations by 90 degrees, horizontal flip).
TTA_MODES: dict[str, list[tuple[int, bool]]] = {
    "none": [(0, False)],
    "flips": [(0, False), (0, True), (2, True), (2, False)],
    "d4": [(k, flip) for k in range(4) for flip in (False, True)],
}

#: Input sizes ``--tile auto`` tries (the nearest valid size to each), pixels per side.
AUTO_TILE_CANDIDATES = (256, 384, 512, 768, 1024, 1536)
#: Share of the available memory (host RAM, or free GPU memory) one batch's activations may use.
AUTO_TILE_MEMORY_SHARE = 0.25

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
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda:0"``...
        tile: tile input size in pixels (a valid size for the network), ``None`` for the
            bundle's default, or ``"auto"`` to measure the fastest valid size (see
            :func:`choose_tile` below).
        batch_size: tiles per forward pass (halved automatically on out-of-memory).
        tta: test-time augmentation: ``False``/"none", ``"flips"`` (4), ``True``/"d4" (8 dihedral).
        blend: ``"none"`` (exact crop-only stitching) or ``"gaussian"`` (overlapping tiles averaged
            with Gaussian weights, for instance/group-norm models; see :mod:`training.inference.blending`).
        overlap: with ``blend="gaussian"``, the share of a tile's span its neighbour repeats.
        sigma_scale: with ``blend="gaussian"``, the Gaussian's sigma as a share of the span.
        threshold: two-class models: ``"bundle"`` (the bundle's calibrated threshold -- the one
            calibrated with this ``tta`` mode when the bundle has it -- argmax if it has none),
            ``None`` (argmax) or a probability in [0, 1]: class 1 where ``p1 >=`` it.
    """

    def __init__(
        self,
        bundle_or_path: Bundle | str | Path | None = None,
        device: str | torch.device = "auto",
        tile: int | str | None = None,
        batch_size: int | None = None,
        tta: bool | str = False,
        blend: str = "none",
        overlap: float = DEFAULT_OVERLAP,
        sigma_scale: float = DEFAULT_SIGMA_SCALE,
        threshold: float | str | None = "bundle",
    ) -> None:
        self.blend = check_blend(blend, overlap, sigma_scale)
        self.overlap = float(overlap)
        self.sigma_scale = float(sigma_scale)
        self.device = resolve_device(device)
        bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path or DEFAULT_BUNDLE)
        if bundle.info.task != "segmentation" or bundle.info.geometry is None:
            raise ValueError(f"{bundle.path}: not a segmentation model (task {bundle.info.task!r})")
        self.bundle = bundle
        if any(isinstance(m, PER_SAMPLE_NORMS) for m in bundle.model.modules()):
            warnings.warn(
                "this model normalises each input with its own statistics (instance/group norm): "
                "tiles see different statistics than a whole-image pass, so tiled results are not exact"
                + ("" if self.blend == "gaussian" else "; to hide the seams, blend overlapping tiles with "
                   "blend='gaussian' (tessera predict --blend gaussian)"),
                stacklevel=2,
            )
        self.model = prepare_model(bundle.model, self.device)
        mode = tta_mode(tta)
        self.transforms = TTA_MODES[mode]
        caveat = tta_caveat(bundle.info, mode)
        if caveat:
            warnings.warn(caveat, stacklevel=2)
        self.corrections = tta_corrections(bundle.info, self.transforms)
        #: The tile geometry: the model's, with the context grown by what the TTA corrections read.
        self.geometry: TileGeometry = bundle.info.geometry
        reach = correction_reach(self.corrections or [])
        if reach:
            self.geometry = dataclasses.replace(self.geometry, halo=self.geometry.context + reach)
        self.batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, 2)
        self._runner = BatchRunner(self._forward, self.batch_size)
        self.tile = self._resolve_tile(tile)
        if threshold == "bundle":
            threshold = bundle.info.tta_thresholds.get(mode, bundle.info.threshold)
        self.threshold = check_threshold(threshold, self.num_classes)

    # ------------------------------------------------------------------ description
    @property
    def info(self) -> BundleInfo:
        return self.bundle.info

    @property
    def num_classes(self) -> int:
        return int(self.info.spec.get("num_classes", len(self.info.classes)))

    def _resolve_tile(self, tile: int | str | None) -> int:
        if tile is None:
            tile = int(self.info.tile.get("input", 0)) or self.geometry.input_size_for(388)
        if tile == "auto":
            self.tile_choice = choose_tile(self)
            return self.tile_choice.size
        tile = int(tile)
        self.geometry.check_input(tile)
        self.geometry.tile_step(tile)
        return tile

    def grid(self, height: int, width: int) -> TileGrid:
        """The tile grid this predictor uses for a ``height x width`` image (overlapping tiles
        when blending)."""
        overlap = self.overlap if self.blend == "gaussian" else 0.0
        return TileGrid.plan(self.geometry, height, width, self.tile, overlap)

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
    ) -> Prediction:
        """Labels (and probabilities) of exactly the block ``[y0, y1) x [x0, x1)`` of ``source``.

        The tiles are those of the whole image's grid, so the block is identical to the same block
        of a whole-image run (what a Dask job computes per output chunk). ``stats`` are the whole
        image's normalisation statistics (:meth:`statistics`); computed here when ``None``.
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
        self._check_source(source)
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
        from training.io.images import match_channels

        return match_channels(image, self.info.in_channels)

    def _check_source(self, source: ArrayLike2D) -> None:
        shape = source.shape
        if len(shape) not in (2, 3) or shape[0] < 1 or shape[1] < 1:
            raise ImageError(f"image shape {tuple(shape)} is not a non-empty (H, W) or (H, W, C) array", "shape")
        have = 1 if len(shape) == 2 else shape[2]
        if have != self.info.in_channels:
            raise ImageError(f"image has {have} channel(s), the model takes {self.info.in_channels}", "channels")

    # ------------------------------------------------------------------ the engine
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, h, w)`` float32 on the CPU for a normalised batch, TTA averaged."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        total = None
        with torch.inference_mode(), autocast(self.device):
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
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def read() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    ready.put((chunk, self._windows(source, chunk, stats)))
                ready.put(None)
            except BaseException as error:  # handed to the consumer, which re-raises it
                ready.put(error)

        reader = threading.Thread(target=read, name="tessera-tile-reader", daemon=True)
        reader.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while reader.is_alive():
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass
            reader.join()

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


def tta_corrections(info: BundleInfo, transforms: list[tuple[int, bool]]) -> list[tuple[float, float]] | None:
    """Per test-time view, the move that puts its un-viewed probabilities back where a model
    trained with ``data.label_offset`` draws labels (:func:`training.data.label_offset.view_correction`);
    None when there is one view or the labels were centred."""
    offset = bundle_label_offset(info.provenance)
    if len(transforms) < 2 or not any(offset):
        return None
    return [view_correction(offset, turns, flip) for turns, flip in transforms]


def tta_caveat(info: BundleInfo, mode: str) -> str | None:
    """Why test-time augmentation ``mode`` may cost this bundle accuracy, from its training config
    (provenance): flips or turns it never trained on. None when it trained on them, or when the
    bundle does not say. (Labels drawn off-centre are no caveat: :func:`tta_corrections`.)"""
    if mode == "none":
        return None
    config = (info.provenance or {}).get("config", {})
    if config.get("augment") is None:
        return None
    from training.data.augment import read_config

    try:
        augment = read_config(config["augment"])
    except (ValueError, OSError):
        return None
    unseen = []
    if augment.get("flip", {}).get("axes") != "both":
        unseen.append("flips" if "flip" not in augment else "flips on both axes")
    if mode == "d4" and "rotate90" not in augment:
        unseen.append("90-degree turns")
    if not unseen:
        return None
    return (f"this model was trained without {' or '.join(unseen)}: test-time augmentation averages in views "
            "it never saw")


def tta_mode(tta: bool | str | None) -> str:
    """A :data:`TTA_MODES` name from a bool (True: ``d4``) or a mode name; ValueError otherwise."""
    if tta is True:
        return "d4"
    if tta is False or tta is None:
        return "none"
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)} (or true/false), not {tta!r}")
    return tta


@dataclass
class TileChoice:
    """What ``tile="auto"`` measured: the chosen size and output pixels per second per candidate."""

    size: int
    throughput: dict[int, float] = field(default_factory=dict)


def activation_bytes_per_pixel(predictor: "Predictor", probe: int) -> float:
    """Bytes of layer outputs one input pixel costs in a forward pass, measured with hooks on a
    ``probe``-sized input (an upper bound of the peak: every intermediate counted)."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in predictor.model.modules() if not list(m.children())]
    try:
        predictor._forward(torch.zeros(1, predictor.info.in_channels, probe, probe))
    finally:
        for hook in hooks:
            hook.remove()
    return total / probe**2 / len(predictor.transforms)


def memory_budget(device: torch.device) -> int:
    """Bytes one batch may use: a share of the free GPU memory or of the available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * AUTO_TILE_MEMORY_SHARE)
    import psutil

    return int(psutil.virtual_memory().available * AUTO_TILE_MEMORY_SHARE)


def choose_tile(predictor: "Predictor", budget: int | None = None, candidates=AUTO_TILE_CANDIDATES) -> TileChoice:
    """Measure output pixels per second (halo included) for valid tile sizes near ``candidates``
    whose batch fits ``budget`` bytes, and pick the fastest. One warm-up and one timed batch each."""
    geometry = predictor.geometry
    budget = budget or memory_budget(predictor.device)
    per_pixel = activation_bytes_per_pixel(predictor, geometry.input_size_for(2 * geometry.context + 4 * geometry.stride))
    sizes: list[int] = []
    for wanted in candidates:
        size = geometry.input_size_for(max(wanted - 2 * geometry.margin, 1))
        try:
            geometry.tile_step(size)
        except ValueError:
            continue
        if size not in sizes and (not sizes or size**2 * predictor.batch_size * per_pixel <= budget):
            sizes.append(size)
    throughput: dict[int, float] = {}
    for size in sizes:
        batch = torch.zeros(predictor.batch_size, predictor.info.in_channels, size, size)
        predictor._runner(batch)
        start = time.perf_counter()
        predictor._runner(batch)
        throughput[size] = predictor.batch_size * geometry.tile_step(size) ** 2 / (time.perf_counter() - start)
    if not throughput:
        raise ValueError("no valid tile size fits: the model's halo is too large for every candidate")
    return TileChoice(size=max(throughput, key=throughput.get), throughput=throughput)
