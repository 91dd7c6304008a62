"""Objects of a label map as GeoJSON polygons, streamed chunk by chunk (QuPath's import format).

An *object* is a 4-connected region of one class. Its polygon follows pixel edges, so its area is
its pixel count (times ``to_level0**2`` once scaled to level-0 pixels); holes are kept. The label map
is read one chunk at a time in row-major order: each chunk's regions become polygons (the union of
their row runs, :func:`region_polygons`), regions touching the chunk above or to the left with the
same class are joined (union-find over region ids, through one row of ids per chunk border), and an
object is written as soon as no region of it touches the bottom of the current chunk row. Memory
holds one chunk plus the objects crossing one chunk-row border, whatever the image height.

Each feature is what QuPath imports: ``{"type": "Feature", "geometry": Polygon, "properties":
{"objectType": "annotation" | "detection", "classification": {"name", "color"}}}``, coordinates in
level-0 pixels of the slide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import shapely

from training.errors import OptionError

#: QuPath object types.
OBJECT_TYPES = ("annotation", "detection")


def row_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row runs of equal non-zero ids: ``(row, first column, end column)`` arrays, row-major order."""
    padded = np.zeros((ids.shape[0], ids.shape[1] + 2), ids.dtype)
    padded[:, 1:-1] = ids
    rows, cols = np.nonzero(np.diff(padded, axis=1))  # every change of id starts or ends a run
    begins = padded[rows, cols + 1] != 0
    ends = padded[rows, cols] != 0
    start_rows, starts = rows[begins], cols[begins]
    return start_rows, starts, cols[ends]


def region_polygons(labels: np.ndarray, origin: tuple[int, int] = (0, 0)) -> dict[int, shapely.Polygon]:
    """Polygon (pixel edges, holes kept) of every non-zero region id of ``labels``, offset by ``origin``.

    ``labels`` holds one id per 4-connected region (0 = none). Each region is the coverage union of
    the boxes of its row runs: boxes only share edges, so the union is exact and fast.
    """
    rows, starts, ends = row_runs(labels)
    if rows.size == 0:
        return {}
    ids = labels[rows, starts]
    boxes = shapely.box(starts + origin[1], rows + origin[0], ends + origin[1], rows + 1 + origin[0])
    order = np.argsort(ids, kind="stable")
    ids, boxes = ids[order], boxes[order]
    bounds = np.flatnonzero(np.diff(ids)) + 1
    return {int(group[0]): union(part) for group, part in zip(np.split(ids, bounds), np.split(boxes, bounds))}


def union(pieces) -> shapely.Geometry:
    """Union of polygons that only share edges: GEOS's coverage union (fast), or the general union
    where pieces share edge parts without shared vertices (GEOS refuses those as not noded)."""
    if len(pieces) == 1:
        return pieces[0]
    try:
        return valid(shapely.coverage_union_all(pieces))
    except shapely.errors.GEOSException:
        return valid(shapely.union_all(pieces))


def valid(geometry) -> shapely.Geometry:
    """``geometry`` itself when valid; else repaired keeping its structure (a hole touching its shell)."""
    if shapely.is_valid(geometry):
        return geometry
    return shapely.make_valid(geometry, method="structure", keep_collapsed=False)


class _Joins:
    """Union-find over region ids, with each root's class and polygon pieces."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.pieces: dict[int, list] = {}
        self.classes: dict[int, int] = {}

    def add(self, region: int, cls: int, polygon) -> None:
        self.parent[region] = region
        self.pieces[region] = [polygon]
        self.classes[region] = cls

    def root(self, region: int) -> int:
        while self.parent[region] != region:
            self.parent[region] = self.parent[self.parent[region]]
            region = self.parent[region]
        return region

    def join(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pieces[ra].extend(self.pieces.pop(rb))

    def take(self, keep: set[int]) -> list[tuple[int, list]]:
        """Remove and return ``(class, pieces)`` of every object whose root is not in ``keep``."""
        done = [r for r in self.pieces if r not in keep]
        out = [(self.classes[r], self.pieces.pop(r)) for r in done]
        alive = set(self.pieces)
        self.parent = {k: v for k, v in self.parent.items() if self.root(k) in alive}
        return out


def label_regions(block: np.ndarray, classes: Sequence[int], first_id: int) -> tuple[np.ndarray, dict[int, int]]:
    """Region ids (4-connected, per class, numbered from ``first_id``; 0 elsewhere) and each id's class."""
    regions = np.zeros(block.shape, np.int64)
    owner: dict[int, int] = {}
    for cls in classes:
        mask = (block == cls).astype(np.uint8)
        if not mask.any():
            continue
        count, local = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)
        regions[local > 0] = local[local > 0] + (first_id - 1)
        owner.update({first_id + i: cls for i in range(count - 1)})
        first_id += count - 1
    return regions, owner


def join_border(joins: _Joins, before: np.ndarray, after: np.ndarray) -> None:
    """Join regions facing each other across a chunk border (same class, 4-adjacent pixels)."""
    touching = (before > 0) & (after > 0)
    for a, b in set(zip(before[touching].tolist(), after[touching].tolist())):
        if joins.classes[joins.root(a)] == joins.classes[joins.root(b)]:
            joins.join(a, b)


def iter_objects(labels, classes: Sequence[int], chunk: tuple[int, int]) -> Iterator[tuple[int, shapely.Polygon]]:
    """``(class, polygon)`` of every object of ``classes`` in ``labels`` (H, W), read chunk by chunk.

    Polygons are in the label map's pixels; an object crossing chunk borders is one polygon.
    """
    height, width = labels.shape[:2]
    joins, next_id = _Joins(), 1
    above = np.zeros(width, np.int64)
    for y0 in range(0, height, chunk[0]):
        y1 = min(y0 + chunk[0], height)
        below = np.zeros(width, np.int64)
        left = np.zeros(y1 - y0, np.int64)
        for x0 in range(0, width, chunk[1]):
            x1 = min(x0 + chunk[1], width)
            regions, owner = label_regions(np.asarray(labels[y0:y1, x0:x1]), classes, next_id)
            next_id += len(owner)
            for region, polygon in region_polygons(regions, (y0, x0)).items():
                joins.add(region, owner[region], polygon)
            join_border(joins, above[x0:x1], regions[0])
            join_border(joins, left, regions[:, 0])
            left, below[x0:x1] = regions[:, -1], regions[-1]
        keep = {joins.root(r) for r in np.unique(below[below > 0]).tolist()} if y1 < height else set()
        for cls, pieces in joins.take(keep):
            yield cls, valid(shapely.simplify(union(pieces), 0))  # collinear vertices along pixel edges dropped
        above = below


def feature(polygon, name: str, object_type: str, color: Sequence[int] | None, to_level0: float) -> dict:
    """A QuPath GeoJSON feature of ``polygon`` scaled by ``to_level0`` (coordinates rounded to 1/1000 px)."""
    if to_level0 != 1:
        polygon = shapely.transform(polygon, lambda xy: xy * to_level0)
    classification: dict = {"name": name}
    if color is not None:
        classification["color"] = [int(c) for c in color]
    geometry = json.loads(shapely.to_geojson(shapely.set_precision(polygon, 0.001) if to_level0 != 1 else polygon))
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": object_type, "classification": classification}}


def iter_features(labels, names: Mapping[int, str], chunk: tuple[int, int] = (1024, 1024), object_type: str = "annotation",
                  colors: Mapping[int, Sequence[int]] | None = None, to_level0: float = 1.0) -> Iterator[dict]:
    """QuPath features of the objects of the classes in ``names`` (class index -> name)."""
    if object_type not in OBJECT_TYPES:
        raise OptionError(f"object type must be one of {', '.join(OBJECT_TYPES)}, not {object_type!r}")
    for cls, polygon in iter_objects(labels, sorted(names), chunk):
        yield feature(polygon, names[cls], object_type, (colors or {}).get(cls), to_level0)


def feature_collection(features: Iterator[dict]) -> dict:
    """All features in memory as one FeatureCollection (responses of the HTTP service)."""
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path: str | Path, features: Iterator[dict]) -> int:
    """Stream features into a FeatureCollection file (written beside, then moved in place); returns the count."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    count = 0
    with partial.open("w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        for item in features:
            out.write(("," if count else "") + "\n" + json.dumps(item, separators=(",", ":")))
            count += 1
        out.write("\n]}\n")
    os.replace(partial, path)
    return count
