"""Tessera's model library: U-Nets and smp backbones, bundles, training, and the exact tiler.

The public API, importable from here::

    from training import Predictor, load_bundle

    predictor = Predictor("model.safetensors", tile=572)       # or None: the shipped model
    labels = predictor.predict(pixels).labels                   # (H, W) class indices

    from training import load_config, train
    result = train(load_config("configs/isbi2012.yaml", ["run.max_minutes=5"]))

The package's parts (one concept per module):

* top level -- shared primitives: :mod:`~training.geometry` (valid sizes, margins, tile steps),
  :mod:`~training.mirror` (the one mirror padding), :mod:`~training.normalization`,
  :mod:`~training.device` (device choice, autocast, OOM back-off), :mod:`~training.labels`,
  :mod:`~training.bundle` (the self-describing ``.safetensors`` model file), :mod:`~training.errors`;
* :mod:`training.models` -- networks: the classic U-Net, smp architectures, classifier backbones;
* :mod:`training.data` -- datasets, selections, patches, augmentation, weight maps, label offsets;
* :mod:`training.io` -- image decoding, lazy readers (sources), chunked writers (sinks), overlays;
* :mod:`training.inference` -- the predictor, its options, the tile grid, blending, TTA, decisions;
* :mod:`training.loop` -- the trainer, its config, losses, metrics, validation and evaluation.

Names are resolved lazily (PEP 562), so ``import training`` stays cheap and ``tessera --help``
does not load PyTorch.
"""

from __future__ import annotations

from training.lazy import lazy_attributes

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Bundle": "training.bundle",
    "BundleInfo": "training.bundle",
    "DEFAULT_BUNDLE": "training.bundle",
    "load_bundle": "training.bundle",
    "read_bundle_info": "training.bundle",
    "save_bundle": "training.bundle",
    "TesseraError": "training.errors",
    "TileGeometry": "training.geometry",
    "mirror_pad": "training.mirror",
    "Normalization": "training.normalization",
    "build_model": "training.models",
    "InferenceOptions": "training.inference.options",
    "Prediction": "training.inference.predictor",
    "Predictor": "training.inference.predictor",
    "open_image": "training.io.readers",
    "read_image": "training.io.images",
    "open_sink": "training.io.writers",
    "TrainConfig": "training.loop.config",
    "load_config": "training.loop.config",
    "train": "training.loop.trainer",
    "evaluate_bundle": "training.loop.evaluate",
    "train_classifier": "training.loop.classify",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
