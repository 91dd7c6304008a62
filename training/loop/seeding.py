"""Seeding every random generator of a training run from one number.

* :func:`seed_everything` seeds python's ``random``, numpy's global generator and torch's (all
  devices) in this process.
* :func:`epoch_seed` is the seed of one epoch. The trainer calls ``seed_everything(epoch_seed(seed,
  epoch))`` at the start of every epoch, so an epoch's patches, augmentations, dropout masks and
  DataLoader worker seeds depend on ``(seed, epoch)`` only: a run resumed at an epoch boundary
  draws exactly what an uninterrupted run draws, and no random state needs to be saved.
* :func:`worker_init_fn` seeds DataLoader worker processes. albumentations 2.0.8 copies the same
  random state into every worker, so without it all workers would augment alike.
"""

from __future__ import annotations

import random

import numpy as np
import torch

#: Seeds of different epochs are this far apart (any large odd constant works).
EPOCH_SEED_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every random generator gets at the start of ``epoch`` (0-based) of run ``seed``."""
    return (seed * EPOCH_SEED_STRIDE + epoch) % 2**31


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (do this before building DataLoaders:
    their worker seeds are drawn from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a distinct, reproducible seed in each worker.

    PyTorch gives worker ``i`` the seed ``base_seed + i`` (``base_seed`` drawn from the main
    process's torch generator each time the loader is iterated); this seeds python, numpy and the
    dataset's own streams (``dataset.reseed(seed)`` when it has one) from it. (It must not touch
    OpenCV's thread pool: ``cv2.setNumThreads`` in a forked worker deadlocks on the parent's pool.)
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32 if info is not None else torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    dataset = info.dataset if info is not None else None
    if dataset is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
