"""Folder jobs in this process: outputs equal the predictor's, manifest with hashes, verified
resume, refused names, collisions, the DST lock and leftover temporaries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from service.batch import segment_folder
from service.batch.files import UnsafeNameError, job_lock, safe_relative
from service.cli import main
from tests.support.batch import TILE, make_folder, tree_bytes
from training.io.images import read_image
from training.io.overlay import overlay
from training.inference.predictor import Predictor
from training.io.writers import encode_png, encode_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def manifest(dst: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]
    return {r["input"]: r for r in records}


def test_outputs_equal_the_predictor_and_manifest_hashes_match(bundle: Path, tmp_path: Path) -> None:
    images = make_folder(tmp_path / "src", 5)
    dst = tmp_path / "dst"
    report = segment_folder(bundle, tmp_path / "src", dst, overlay=True, probabilities=True, tile=TILE)
    assert (report.total, report.succeeded, report.failed, report.skipped, report.ok) == (5, 5, 0, 0, True)
    predictor = Predictor(bundle, tile=TILE)
    records = manifest(dst)
    assert sorted(records) == sorted(images)
    for name, pixels in images.items():
        stem = name.rsplit(".", 1)[0]
        expected = predictor.predict(pixels, probabilities=True)
        labels = read_image(dst / f"{stem}.png")
        np.testing.assert_array_equal(labels, expected.labels)
        assert 0 < labels.mean() < 1  # both classes present: the comparison means something
        probabilities = tifffile.imread(dst / f"{stem}.probabilities.tif")
        np.testing.assert_array_equal(probabilities, encode_probabilities(expected.probabilities, np.uint8))
        assert (dst / f"{stem}.overlay.png").read_bytes() == encode_png(overlay(pixels, expected.labels))
        record = records[name]
        assert record["status"] == "ok" and record["error"] is None and record["seconds"] > 0
        assert record["output"] == f"{stem}.png"
        assert record["input_sha256"] == hashlib.sha256((tmp_path / "src" / name).read_bytes()).hexdigest()
        for kind, output in record["outputs"].items():
            assert hashlib.sha256((dst / output["path"]).read_bytes()).hexdigest() == output["sha256"], kind


def test_rerun_skips_only_verified_outputs(bundle: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "src", 4)
    dst = tmp_path / "dst"
    segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    first = tree_bytes(dst)
    again = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert (again.skipped, again.succeeded) == (4, 0)
    # an output that exists but is not what the manifest says is redone, not trusted
    (dst / "img001.png").write_bytes(encode_png(np.zeros((5, 5), np.uint8)))
    # a changed input is redone too
    (tmp_path / "src" / "img000.png").write_bytes(encode_png(np.full((30, 40), 200, np.uint8)))
    third = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert (third.skipped, third.succeeded) == (2, 2)
    after = tree_bytes(dst)
    assert after["img001.png"] == first["img001.png"]
    assert read_image(dst / "img000.png").shape == (30, 40)
    # the compacted manifest holds one record per input
    lines = (dst / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_changed_settings_redo_everything(bundle: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "src", 2)
    dst = tmp_path / "dst"
    segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE, overlay=True)
    assert (report.succeeded, report.skipped) == (2, 0)
    assert (dst / "img000.overlay.png").is_file()


def test_threshold_decides_the_masks_and_is_a_setting(bundle: Path, tmp_path: Path) -> None:
    """``--threshold P``: class 1 where its probability >= P, as the Predictor decides; a job with
    another threshold is another job (nothing skipped), the bundle's own threshold the default."""
    images = make_folder(tmp_path / "src", 2)
    dst = tmp_path / "dst"
    segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert main(["batch", str(bundle), str(tmp_path / "src"), str(dst), "--tile", str(TILE),
                 "--threshold", "0.7", "--quiet"]) == 0
    assert {r["status"] for r in manifest(dst).values()} == {"ok"}
    strict = Predictor(bundle, tile=TILE, threshold=0.7)
    for name, pixels in images.items():
        probabilities = strict.predict(pixels, probabilities=True).probabilities
        labels = read_image(dst / f"{name.rsplit('.', 1)[0]}.png")
        np.testing.assert_array_equal(labels, (probabilities[1] >= 0.7).astype(labels.dtype))
        assert labels.sum() < Predictor(bundle, tile=TILE).predict(pixels).labels.sum()  # not the argmax
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE, threshold=0.7)
    assert (report.succeeded, report.skipped) == (0, 2)
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert (report.succeeded, report.skipped) == (2, 0)


def test_blend_gaussian_folder_job_equals_the_blending_predictor_and_is_a_setting(bundle: Path, tmp_path: Path) -> None:
    images = make_folder(tmp_path / "src", 2)
    dst = tmp_path / "dst"
    assert main(["batch", str(bundle), str(tmp_path / "src"), str(dst), "--tile", str(TILE), "--blend", "gaussian", "--quiet"]) == 0
    predictor = Predictor(bundle, tile=TILE, blend="gaussian")
    for name, pixels in images.items():
        np.testing.assert_array_equal(read_image(dst / f"{name.rsplit('.', 1)[0]}.png"), predictor.predict(pixels).labels)
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)  # crop-only: another job
    assert (report.succeeded, report.skipped) == (2, 0)
    pixels = next(iter(images.values()))
    tifffile.imwrite(tmp_path / "slide.tif", pixels)
    out = tmp_path / "out"
    assert main(["batch", str(bundle), str(tmp_path / "slide.tif"), str(out), "--tile", str(TILE), "--blend", "gaussian",
                 "--quiet"]) == 0  # gigapixel jobs blend too (tests/service/batch/test_batch_gigapixel_blend.py)
    np.testing.assert_array_equal(zarr.open_array(str(out / "slide.zarr" / "0"), mode="r")[:], predictor.predict(pixels).labels)


def test_listing_with_escaping_names_is_refused_and_nothing_leaves_dst(bundle: Path, tmp_path: Path) -> None:
    images = make_folder(tmp_path / "data" / "src", 2)
    outside = tmp_path / "data" / "x.png"
    outside.write_bytes(encode_png(images["img000.png"]))
    listing = tmp_path / "data" / "src" / "list.txt"
    listing.write_text(f"# inputs\nimg000.png\n../x.png\n{outside}\n\nimg001.png\n")
    dst = tmp_path / "out" / "dst"
    report = segment_folder(bundle, listing, dst, tile=TILE)
    assert (report.succeeded, report.refused, report.ok) == (2, 2, False)
    records = manifest(dst)
    assert records["../x.png"]["status"] == "refused" and "'..'" in records["../x.png"]["error"]
    assert records[str(outside)]["status"] == "refused" and "absolute" in records[str(outside)]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dst"]
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "out" / "x.png").exists()


def test_symlink_inside_dst_cannot_lead_outside(bundle: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "src", 4)  # img003 lives in sub/
    dst, elsewhere = tmp_path / "dst", tmp_path / "elsewhere"
    dst.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, dst / "sub")
    report = segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert (report.succeeded, report.refused) == (3, 1)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "C:\\x", "", "."])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        safe_relative(name)


def test_safe_names_pass() -> None:
    assert str(safe_relative("a/b/c.png")) == "a/b/c.png"
    assert str(safe_relative("a..b.png")) == "a..b.png"


def test_colliding_outputs_refused_before_anything_runs(bundle: Path, tmp_path: Path) -> None:
    images = make_folder(tmp_path / "src", 1)
    (tmp_path / "src" / "img000.jpg").write_bytes((tmp_path / "src" / "img000.png").read_bytes())
    with pytest.raises(ValueError, match="both write 'img000.png'"):
        segment_folder(bundle, tmp_path / "src", tmp_path / "dst", tile=TILE)
    assert not (tmp_path / "dst" / "img000.png").exists() and images


def test_one_job_per_dst_and_leftover_temporaries_removed(bundle: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "src", 1)
    dst = tmp_path / "dst"
    dst.mkdir()
    stale = dst / ".img000.png.ab12cd34.tmp"
    stale.write_bytes(b"half")
    keep = dst / "notes.tmp"
    keep.write_text("not ours")
    with job_lock(dst):
        with pytest.raises(ValueError, match="another batch job"):
            segment_folder(bundle, tmp_path / "src", dst, tile=TILE)
    assert segment_folder(bundle, tmp_path / "src", dst, tile=TILE).ok
    assert not stale.exists() and keep.exists()


def test_glob_source_and_cli_exit_codes(bundle: Path, tmp_path: Path, capsys) -> None:
    make_folder(tmp_path / "src", 4)
    (tmp_path / "src" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code = main(["batch", str(bundle), str(tmp_path / "src" / "**" / "*.tif"), str(tmp_path / "tifs"), "--tile", str(TILE)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and (report["succeeded"], report["ok"]) == (1, True)
    assert (tmp_path / "tifs" / "sub" / "img003.png").is_file()
    code = main(["batch", str(bundle), str(tmp_path / "src"), str(tmp_path / "all"), "--tile", str(TILE), "--quiet"])
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert code == 1 and (report["succeeded"], report["failed"]) == (4, 1)
    assert "broken.png" in out.err
    assert main(["batch", str(bundle), str(tmp_path / "src"), str(tmp_path / "x"), "--scheduler", "cluster"]) == 2
    assert main(["batch", str(bundle), str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
