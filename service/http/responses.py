"""What the HTTP service returns besides label PNGs: per-class statistics and object geometries.

* :func:`class_statistics` -- pixel count, fraction and area per class (area in ``pixel_size``
  units squared).
* :func:`geojson_objects` -- every 4-connected object of the requested classes as a GeoJSON
  ``Feature`` with a ``Polygon`` along pixel edges (exterior ring plus holes; its area is the pixel
  count) in pixel coordinates, x to the right, y down (the convention QuPath and shapely read),
  built by :mod:`training.io.geojson` as ``tessera predict --objects`` builds them: properties
  ``objectType`` and ``classification`` for QuPath, plus ``class``, ``class_name``, ``area``.
* :func:`coco_objects` -- the same objects as COCO run-length encodings in pycocotools' uncompressed
  form: ``{"size": [h, w], "counts": [...]}``, runs over the column-major (Fortran) flattened mask,
  starting with a run of zeros.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

from training.io.geojson import feature, iter_objects
from training.io.overlay import PALETTE


def class_statistics(labels: np.ndarray, classes: Sequence[str], pixel_size: float = 1.0) -> list[dict]:
    """Pixel count, fraction of the image and area of every class."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    total = labels.size
    return [
        {
            "class": index,
            "class_name": name,
            "pixels": int(counts[index]),
            "fraction": float(counts[index] / total),
            "area": float(counts[index] * pixel_size**2),
        }
        for index, name in enumerate(classes)
    ]


def _components(labels: np.ndarray, classes: Sequence[int]) -> Iterator[tuple[int, np.ndarray, tuple[slice, slice]]]:
    """(class, component mask cropped to its box, box) for every 4-connected object of ``classes``."""
    for cls in classes:
        components, count = ndimage.label(labels == cls)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is not None:
                yield cls, components[box] == index, box


def geojson_objects(labels: np.ndarray, classes: Sequence[str], include: Sequence[int], pixel_size: float = 1.0) -> dict:
    """A GeoJSON FeatureCollection of the objects of the classes in ``include``."""
    features = []
    for cls, polygon in iter_objects(labels, sorted(include), labels.shape[:2]):
        item = feature(polygon, classes[cls], "annotation", PALETTE[cls % len(PALETTE)], 1.0)
        item["properties"].update({"class": cls, "class_name": classes[cls], "area": float(polygon.area * pixel_size**2)})
        features.append(item)
    return {"type": "FeatureCollection", "features": features}


def rle_counts(positions: np.ndarray, size: int) -> list[int]:
    """Uncompressed COCO counts for a mask whose set pixels are the sorted column-major
    ``positions`` of a flattened mask of ``size`` pixels."""
    if positions.size == 0:
        return [size]
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = positions[np.r_[0, breaks]]
    ends = positions[np.r_[breaks - 1, positions.size - 1]] + 1
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, size
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    return np.diff(edges).tolist()


def coco_objects(labels: np.ndarray, classes: Sequence[str], include: Sequence[int]) -> list[dict]:
    """COCO-style annotations (category, bbox, area, RLE segmentation) of the objects of ``include``."""
    height, width = labels.shape
    objects = []
    for cls, mask, box in _components(labels, include):
        ys, xs = np.nonzero(mask)
        positions = np.sort((xs + box[1].start) * height + (ys + box[0].start))
        objects.append(
            {
                "category_id": cls,
                "category_name": classes[cls],
                "area": int(mask.sum()),
                "bbox": [box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start],
                "segmentation": {"size": [height, width], "counts": rle_counts(positions, height * width)},
            }
        )
    return objects
