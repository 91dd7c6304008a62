"""The training loop and what it is made of.

* :mod:`training.loop.trainer` -- :class:`~training.loop.trainer.Trainer` (the loop) and :func:`~training.loop.trainer.train`;
* :mod:`training.loop.config` -- the YAML config and its overrides, validated;
* :mod:`training.loop.splits` -- the training and validation pairs a config selects, the training patches;
* :mod:`training.loop.network` -- the network, optimizer, learning-rate schedule, encoder freezing;
* :mod:`training.loop.validation` -- validation, precise BatchNorm, threshold calibration;
* :mod:`training.loop.artifacts` -- best/last bundles with provenance, metric files, curves, overlays;
* :mod:`training.loop.checkpoint` -- the exact-resume state beside the last bundle;
* :mod:`training.loop.losses`, :mod:`training.loop.metrics`, :mod:`training.loop.averaging`,
  :mod:`training.loop.batchnorm`, :mod:`training.loop.seeding`, :mod:`training.loop.plots`;
* :mod:`training.loop.evaluate` -- scoring and calibrating a bundle on labelled images (``tessera evaluate``/``calibrate``);
* :mod:`training.loop.classify` -- classifier pretraining of an encoder (``tessera train-classifier``).
"""
