"""The root of Tessera's errors: bad input a user can fix.

Every error Tessera raises about what it was given (a file, an option, a configuration, a model
bundle, an image) is a :class:`TesseraError` whose message names the thing and the problem in one
line, so that callers can tell it apart from a failure of the machine (``OSError``: disk full,
permission denied; ``MemoryError``) and from a bug (anything else). The command line prints a
``TesseraError`` as one line with exit code 2; the HTTP service answers it with a 4xx status.

The errors under it, by what was wrong::

    TesseraError
    ├── OptionError          an option or argument value (CLI flag, API keyword, model spec)
    ├── InvalidSizeError     an image or tile size the network cannot take   (training.geometry)
    ├── ImageError           an image file or upload                          (training.io.images)
    ├── BundleError          a model bundle file                              (training.bundle)
    ├── WeightsError         a weights file                                   (training.models.weights)
    ├── DatasetError         images and masks to train or evaluate on        (training.data.dataset)
    ├── ConfigError          a training configuration key                    (training.loop.config)
    ├── CheckpointError      the state to resume a training run from         (training.loop.checkpoint)
    ├── UnsafeNameError      an output name that would leave its folder       (service.batch.files)
    └── UploadError          an HTTP request the service refuses              (service.http.uploads)

``TesseraError`` subclasses ``ValueError``: code that catches ``ValueError`` keeps working.
Broken internal invariants (bugs) are not ``TesseraError``: they stay plain exceptions.
"""

from __future__ import annotations


class TesseraError(ValueError):
    """Bad input a user can fix; the message names what was given and what is wrong with it."""


class OptionError(TesseraError):
    """An option value outside what it may be (a CLI flag, an API keyword, a model spec entry);
    the message names the option and the values it takes."""
