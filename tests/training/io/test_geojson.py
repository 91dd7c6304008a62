"""GeoJSON objects: chunk-streamed polygons equal the label map's regions, across chunk borders."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import shapely

from training.io.geojson import feature_collection, iter_features, iter_objects, region_polygons, write_geojson


def regions_of(labels: np.ndarray, cls: int) -> list[np.ndarray]:
    count, ids = cv2.connectedComponents((labels == cls).astype(np.uint8), connectivity=4)
    return [ids == i for i in range(1, count)]


def label_map() -> np.ndarray:
    """Objects placed on a 32 px chunk grid: inside one chunk, across 1, 2 and 4 chunk borders, with holes."""
    labels = np.zeros((96, 128), np.uint8)
    labels[4:12, 4:12] = 1  # inside one chunk
    labels[4:12, 28:40] = 1  # crosses one vertical border
    labels[20:44, 50:58] = 2  # crosses one horizontal border
    labels[40:70, 60:120] = 1  # crosses 2 horizontal and 2 vertical borders: 6 chunks
    labels[50:60, 70:80] = 0  # a hole in it
    labels[55:57, 74:76] = 2  # an island in the hole
    labels[24:40, 24:40] = 2  # corner object across 4 chunks
    labels[30:34, 30:34] = 0  # hole at the 4-chunk corner
    labels[80:96, 0:128:2] = 1  # stripes touching the bottom
    labels[88, 0:128] = 1  # joined by a bar: one comb across 4 chunks
    yy, xx = np.ogrid[0:96, 0:128]
    labels[((yy - 75) ** 2 + (xx - 20) ** 2 < 100) & ((yy - 75) ** 2 + (xx - 20) ** 2 > 16)] = 2  # ring
    labels[70, 40], labels[71, 41] = 1, 1  # diagonal neighbours: two objects
    return labels


@pytest.mark.parametrize("chunk", [(32, 32), (96, 128), (7, 13), (1, 128)])
def test_objects_equal_the_regions_of_the_label_map(chunk):
    labels = label_map()
    objects = list(iter_objects(labels, [1, 2], chunk))
    for cls in (1, 2):
        truth = sorted(int(r.sum()) for r in regions_of(labels, cls))
        found = [p for c, p in objects if c == cls]
        assert sorted(int(p.area) for p in found) == truth
        assert all(p.geom_type == "Polygon" and p.is_valid for p in found)
    whole = sorted(iter_objects(labels, [1, 2], (96, 128)), key=lambda o: (o[0], o[1].area, o[1].bounds))
    objects.sort(key=lambda o: (o[0], o[1].area, o[1].bounds))
    assert [c for c, _ in objects] == [c for c, _ in whole]
    assert all(p.equals(q) for (_, p), (_, q) in zip(objects, whole))


def test_holes_are_kept():
    labels = label_map()
    polygons = [p for c, p in iter_objects(labels, [1], (32, 32)) if p.bounds == (60.0, 40.0, 120.0, 70.0)]
    assert len(polygons) == 1 and len(polygons[0].interiors) == 1
    assert polygons[0].area == 30 * 60 - 100
    corner = [p for c, p in iter_objects(labels, [2], (32, 32)) if p.bounds == (24.0, 24.0, 40.0, 40.0)]
    assert len(corner) == 1 and len(corner[0].interiors) == 1 and corner[0].area == 256 - 16


def test_a_hole_touching_its_shell_at_a_corner_stays_valid():
    labels = np.zeros((8, 8), np.uint8)
    labels[1:7, 1:7] = 1
    labels[3:5, 3:5] = 0
    labels[2, 2] = 0  # hole pixel diagonal to the hole: still enclosed
    labels[1, 1] = 0  # notch diagonal to it: the background touches at a point
    (_, polygon), = iter_objects(labels, [1], (4, 4))
    assert polygon.is_valid and polygon.area == labels.sum()


def test_region_polygons_offset():
    ids = np.zeros((4, 4), np.int64)
    ids[1:3, 1:4] = 7
    polygons = region_polygons(ids, (100, 200))
    assert polygons[7].bounds == (201.0, 101.0, 204.0, 103.0) and polygons[7].area == 6


def test_features_for_qupath_scaled_to_level0(tmp_path):
    labels = label_map()
    names = {1: "Tumor", 2: "Stroma"}
    features = list(iter_features(labels, names, (32, 32), "detection", {1: (200, 0, 0)}, to_level0=4.0))
    areas = sorted(shapely.geometry.shape(f["geometry"]).area for f in features)
    truth = sorted(16 * int(r.sum()) for cls in (1, 2) for r in regions_of(labels, cls))
    assert areas == truth
    props = features[0]["properties"]
    assert props["objectType"] == "detection" and props["classification"]["name"] in names.values()
    assert {"name": "Tumor", "color": [200, 0, 0]} in [f["properties"]["classification"] for f in features]
    path = tmp_path / "objects.geojson"
    assert write_geojson(path, iter(features)) == len(features)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and data["features"] == json.loads(json.dumps(features))
    assert feature_collection(iter([]))["features"] == []
    assert not list(tmp_path.glob(".*partial"))


def test_bad_object_type():
    with pytest.raises(ValueError, match="annotation, detection"):
        list(iter_features(np.zeros((4, 4), np.uint8), {1: "x"}, object_type="cell"))


def test_random_blobs_across_many_chunks():
    rng = np.random.default_rng(4)
    labels = np.zeros((300, 400), np.uint8)
    for y, x, r, c in zip(rng.integers(0, 300, 80), rng.integers(0, 400, 80), rng.integers(2, 40, 80), rng.integers(1, 4, 80)):
        cv2.circle(labels, (int(x), int(y)), int(r), int(c), -1)
    objects = list(iter_objects(labels, [1, 2, 3], (64, 48)))
    for cls in (1, 2, 3):
        truth = sorted(int(r.sum()) for r in regions_of(labels, cls))
        assert sorted(int(p.area) for c, p in objects if c == cls) == truth
    assert all(p.geom_type == "Polygon" and p.is_valid for _, p in objects)
