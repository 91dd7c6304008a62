"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

* ``w_c`` balances class frequencies: class ``k`` weighs ``N / (K * N_k)`` (``N`` labelled pixels,
  ``K`` classes, ``N_k`` pixels of class ``k``; a class without pixels gets 0), so every class
  contributes the same total weight. Pass dataset-wide weights to balance over a whole dataset.
* ``d1``, ``d2`` are the Euclidean distances (pixels, between pixel centres) from ``x`` to the
  nearest and the second-nearest object. Objects are the 4-connected components of the object
  classes (default: every class but index 0; ISBI: the cells, separated by membrane = class 0), or
  instance labels given by the caller. The border term is added outside every object (in the gaps
  that separate touching objects, Fig. 3d of the paper); inside objects it is 0.
* The term is truncated to 0 where ``d1 + d2 > 4 sigma`` (it is then below ``w0 * e**-8``,
  0.0034 for w0 = 10). With this truncation the result is *exact* when each object's distance
  transform is computed only inside its bounding box grown by ``4 sigma``: a pixel farther from
  an object than that cannot have it as d1 or d2 below the cutoff. Cost is proportional to the
  objects' area, not objects x image: ``bench/weightmap.py`` measured 23-26 ms per 512x512 ISBI
  slice (~133 cells) on the idle 2-core machine (46 ms with scipy's distance transform), ~70x
  faster than whole-image distance maps.
  Components and boxes come from :mod:`scipy.ndimage`; distances from OpenCV's exact transform,
  made bit-exact and independent of where the mask sits in memory (:func:`exact_distance`).
* Ignored pixels (:data:`training.data.dataset.IGNORE_INDEX`) weigh 0.

Public API: :func:`unet_weight_map` (the whole map), :func:`class_balance_weights`,
:func:`object_instances`, :func:`border_weights` (and its slow reference
:func:`border_weights_whole_image`); constants :data:`W0`, :data:`SIGMA`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from training.labels import IGNORE_INDEX

#: The paper's border weight (w0) and its width in pixels (sigma).
W0 = 10.0
SIGMA = 5.0
#: The border term is truncated to 0 where d1 + d2 exceeds this many sigma.
CUTOFF_SIGMAS = 4.0
#: 4-connectivity: objects separated by a one-pixel diagonal line stay separate.
CONNECTIVITY = ndimage.generate_binary_structure(2, 1)


def class_balance_weights(targets: np.ndarray | Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-class weights ``N / (K * N_k)`` from one target or several (float64 ``(K,)``)."""
    if isinstance(targets, np.ndarray):
        targets = [targets]
    counts = np.zeros(num_classes, np.int64)
    for target in targets:
        labelled = target[(target >= 0) & (target < num_classes)]
        counts += np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = total / (num_classes * counts[present])
    return weights


def object_instances(target: np.ndarray, object_classes: Sequence[int]) -> np.ndarray:
    """4-connected components of the pixels whose class is in ``object_classes`` (int32, 0 = none).

    Components of different classes are labelled separately even where they touch.
    """
    instances = np.zeros(target.shape, np.int32)
    count = 0
    for k in object_classes:
        labels, found = ndimage.label(target == k, structure=CONNECTIVITY)
        instances[labels > 0] = labels[labels > 0] + count
        count += found
    return instances


def border_weights(instances: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The separation term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` (float32 ``(H, W)``).

    ``instances``: ``(H, W)`` integer object labels, 0 = no object. Each object's distance map is
    computed inside its bounding box grown by ``4 sigma`` only (see the module docstring).
    """
    height, width = instances.shape
    reach = int(math.ceil(CUTOFF_SIGMAS * sigma))
    nearest = np.full((height, width), np.inf, np.float32)
    second = np.full((height, width), np.inf, np.float32)
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        xs = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        distance = exact_distance(instances[ys, xs] != label)
        d1, d2 = nearest[ys, xs], second[ys, xs]
        np.minimum(d2, np.maximum(d1, distance), out=d2)
        np.minimum(d1, distance, out=d1)
    return truncated_border_term(nearest, second, instances > 0, w0, sigma)


def border_weights_whole_image(instances: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """:func:`border_weights` computed the slow, obvious way -- one whole-image distance map per
    object, the two smallest per pixel -- as the reference for tests and the benchmark."""
    labels = [k for k in np.unique(instances) if k > 0]
    distances = [ndimage.distance_transform_edt(instances != k).astype(np.float32) for k in labels]
    distances += [np.full(instances.shape, np.inf, np.float32)] * max(0, 2 - len(labels))
    two = np.sort(np.stack(distances), axis=0)[:2]
    return truncated_border_term(two[0], two[1], instances > 0, w0, sigma)


def exact_distance(outside: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (float32) from each True pixel to the nearest False pixel: the
    float32 rounding of the square root of an exact integer, as scipy's ``distance_transform_edt``
    gives it, bit for bit.

    Computed with OpenCV's exact transform (``DIST_MASK_PRECISE``), ~10x faster than scipy's on a
    512x512 mask here. Its float32 output is off by up to an ulp, and *which* pixels are off depends
    on the address of the input buffer (two constructions of one dataset got different weight
    maps, and a resumed training run drifted from an uninterrupted one). Squared distances between
    pixel centres are integers, so rounding the square in float64 recovers each one exactly (an
    ulp of error in a distance d moves d**2 by about d**2 / 2**22: below 0.5 up to d = 1448 px,
    and distances past the border term's 20 px cutoff do not change the map).
    """
    distance = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(distance, dtype=np.float64))).astype(np.float32)


def truncated_border_term(
    d1: np.ndarray, d2: np.ndarray, inside: np.ndarray, w0: float, sigma: float
) -> np.ndarray:
    """The border term from the two nearest distances, 0 inside objects and where d1 + d2 > 4 sigma."""
    total = d1 + d2
    keep = (total <= CUTOFF_SIGMAS * sigma) & ~inside
    term = np.zeros(d1.shape, np.float32)
    term[keep] = w0 * np.exp(-(total[keep] ** 2) / (2 * sigma**2))
    return term


def unet_weight_map(
    target: np.ndarray,
    class_weights: np.ndarray,
    object_classes: Sequence[int] | None = None,
    instances: np.ndarray | None = None,
    w0: float = W0,
    sigma: float = SIGMA,
) -> np.ndarray:
    """The paper's weight map for one ``(H, W)`` int64 target (float32 ``(H, W)``).

    Args:
        target: class indices, :data:`IGNORE_INDEX` where ignored.
        class_weights: ``w_c`` per class (e.g. :func:`class_balance_weights` over the dataset).
        object_classes: classes whose connected components are the objects (default: all but 0).
        instances: instance labels to use instead of connected components (0 = no object).
        w0, sigma: the paper's 10 and 5 px; ``w0 = 0`` gives class balancing only.
    """
    class_weights = np.asarray(class_weights, np.float32)
    ignored = target == IGNORE_INDEX
    weight = class_weights[np.where(ignored, 0, target)]
    if w0 > 0:
        if instances is None:
            classes = range(1, len(class_weights)) if object_classes is None else object_classes
            instances = object_instances(target, classes)
        weight += border_weights(instances, w0, sigma)
    weight[ignored] = 0.0
    return weight
