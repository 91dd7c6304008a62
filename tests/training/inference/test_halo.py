"""The halo measured from agreement with the whole-image pass (same-padded smp networks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from service.cli import main
from tests.support.bundles import TINY_SMP
from tests.support.images import isbi_slice as read_isbi_slice
from training.bundle import Bundle, load_bundle, new_bundle_info, read_bundle_info, save_bundle
from training.inference.halo import halo_agreement, mosaic, scan_halos
from training.inference.halo_record import HaloScan, override_note, preset_halo, preset_target, with_scan
from training.models import build_model
from training.normalization import Normalization

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def smp_bundle() -> Bundle:
    """TINY_SMP with random weights, its head centred on an ISBI slice so both classes occur."""
    image = read_isbi_slice(25)
    torch.manual_seed(0)
    model = build_model(TINY_SMP).eval()
    with torch.no_grad():
        pixels = torch.from_numpy(Normalization.apply(image, *Normalization().statistics(image)))[None]
        logits = model(pixels)[0]
        model.segmentation_head[0].bias[1] -= (logits[1] - logits[0]).median()
    return Bundle(model=model, info=new_bundle_info(TINY_SMP, model, ["a", "b"], Normalization()))


def test_scan_finds_the_smallest_stride_grid_halo_reaching_each_preset(smp_bundle, isbi_slice):
    images, tiles, stride = [isbi_slice[:160, :160]], (40, 64), smp_bundle.info.geometry.stride
    scan = scan_halos(smp_bundle, images, tiles=tiles)
    assert stride == 2 and scan.tiles == [40, 64] and scan.pixels == 160 * 160
    assert list(scan.agreement) == list(range(stride, max(scan.agreement) + 1, stride))
    for name in ("default", "exact"):
        preset = scan.presets[name]
        halo, target = preset["halo"], preset_target(name)
        assert preset["reached"] and preset["agreement"] >= target
        # measured again from scratch: the found halo reaches the target at every tile size ...
        assert min(halo_agreement(smp_bundle, images, halo, t)[0] for t in tiles) >= target
        # ... and the next smaller halo on the stride grid does not (at the worst tile size)
        assert halo > stride
        assert min(halo_agreement(smp_bundle, images, halo - stride, t)[0] for t in tiles) < target
    assert scan.presets["default"]["halo"] <= scan.presets["exact"]["halo"]
    assert scan.agreement[2] < 0.99  # one stride of context is visibly worse: the scan can fail


def test_scan_round_trips_through_json_and_names_missing_presets(smp_bundle, isbi_slice):
    scan = HaloScan(agreement={8: 0.99, 16: 0.9995}, tiles=[96], pixels=100,
                    presets={"default": {"halo": 16, "agreement": 0.9995, "target": 0.999, "reached": True}})
    again = HaloScan.from_dict(scan.to_dict())
    assert again == scan and again.halo_for("default") == 16
    with pytest.raises(ValueError, match="no measured halo for preset 'exact'"):
        again.halo_for("exact")
    with pytest.raises(ValueError, match="halo preset must be one of default, exact"):
        preset_target("loose")


def test_override_note_gives_the_measured_agreement_at_the_overriding_halo():
    record = HaloScan(agreement={8: 0.99, 16: 0.9995}, tiles=[96], pixels=100,
                      presets={"default": {"halo": 16, "agreement": 0.9995, "target": 0.999, "reached": True}}).to_dict()
    assert "99.0000% of the pixels at 8 px" in override_note(record, 8)
    assert "was not measured" in override_note(record, 24)
    assert "tessera calibrate --halo" in override_note(None, 24)


def test_mosaic_lays_images_out_without_changing_pixels():
    a, b = np.full((4, 5), 1, np.uint8), np.full((4, 5), 2, np.uint8)
    laid = mosaic([a, b], size=8, count=2)
    assert [m.shape for m in laid] == [(8, 8), (8, 8)]
    assert (laid[0][:4, :5] == 1).all() and (laid[0][:4, 5:] == 2).all() and (laid[0][4:, :5] == 1).all()
    with pytest.raises(ValueError, match="at least one image"):
        mosaic([])


def test_valid_unets_have_no_halo_to_scan(tiny_bundle):
    with pytest.raises(ValueError, match="same-padded"):
        scan_halos(load_bundle(tiny_bundle), [np.zeros((64, 64), np.uint8)])


def test_a_stored_scan_sets_the_default_halo_and_keeps_the_impulse_one(smp_bundle, tmp_path):
    impulse = smp_bundle.info.geometry.halo
    halo, note = preset_halo(smp_bundle.info, "exact")
    assert halo == impulse and "no measured halo presets" in note
    scan = HaloScan(agreement={2: 0.99, 4: 0.9995, 6: 0.99995}, tiles=[40], pixels=10,
                    presets={"default": {"halo": 4, "agreement": 0.9995, "target": 0.999, "reached": True},
                             "exact": {"halo": 6, "agreement": 0.99995, "target": 0.9999, "reached": True}})
    path = save_bundle(tmp_path / "m.safetensors", smp_bundle.model, with_scan(smp_bundle.info, scan))
    info = load_bundle(path).info
    assert info.geometry.halo == 4 and info.halo["impulse"] == impulse
    assert preset_halo(info, "exact") == (6, None) and preset_halo(info, "default") == (4, None)
    assert HaloScan.from_dict(info.halo) == scan


def test_calibrate_halo_stores_the_scan_and_makes_the_named_preset_the_bundles(smp_bundle, tmp_path, capsys):
    source = save_bundle(tmp_path / "smp.safetensors", smp_bundle.model, smp_bundle.info)
    out = tmp_path / "exact.safetensors"
    assert main(["calibrate", str(source), "-o", str(out), "--halo", "exact", "--select", "0", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    info = read_bundle_info(out)
    presets = info.halo["presets"]
    assert info.halo["preset"] == "exact" and info.geometry.halo == presets["exact"]["halo"] == printed["halo"]
    assert presets["exact"]["reached"] and presets["exact"]["agreement"] >= 0.9999
    assert info.halo["pixels"] == 1024 * 1024 and info.threshold == smp_bundle.info.threshold


def test_calibrate_halo_refuses_valid_unets(tiny_bundle, tmp_path, capsys):
    assert main(["calibrate", str(tiny_bundle), "-o", str(tmp_path / "x.safetensors"), "--halo", "--select", "0"]) == 2
    assert "valid-padded U-Net" in capsys.readouterr().err
