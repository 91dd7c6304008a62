"""Same-padded (smp) inference options: the halo preset or override, the tile chosen per image
from measured rates, and the precision option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from service.batch import segment_gigapixel
from service.cli import main
from tests.support.batch import make_slide
from tests.support.bundles import TINY_SMP
from training.bundle import Bundle, new_bundle_info, save_bundle
from training.inference.halo_record import HaloScan, with_scan
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.inference.tilefit import fit_tile
from training.io.images import read_image
from training.models import build_model
from training.normalization import Normalization

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SCAN = HaloScan(agreement={2: 0.99, 4: 0.9995, 6: 0.99995}, tiles=[40, 64], pixels=25600,
                presets={"default": {"halo": 4, "agreement": 0.9995, "target": 0.999, "reached": True},
                         "exact": {"halo": 6, "agreement": 0.99995, "target": 0.9999, "reached": True}})
#: Equal speed per output pixel: the grid alone decides (halo 8: 64 px keeps 48, 96 px keeps 80).
RATES = {64: 1e6, 96: 1e6}


@pytest.fixture(scope="module")
def smp() -> Bundle:
    torch.manual_seed(0)
    model = build_model(TINY_SMP).eval()
    info = new_bundle_info(TINY_SMP, model, ["a", "b"], Normalization())
    return Bundle(model=model, info=dataclasses.replace(info, geometry=dataclasses.replace(info.geometry, halo=8)))


def test_halo_presets_and_an_override_that_says_what_it_costs(smp):
    scanned = Bundle(model=smp.model, info=with_scan(smp.info, SCAN))
    assert Predictor(scanned, device="cpu", tile=64).geometry.halo == 4  # the default preset
    assert Predictor(scanned, device="cpu", tile=64, halo="exact").geometry.halo == 6
    with pytest.warns(UserWarning, match=r"halo 2 px overrides .* on 99\.0000% of the pixels at 2 px"):
        assert Predictor(scanned, device="cpu", tile=64, halo=2).geometry.halo == 2
    with pytest.warns(UserWarning, match="agreement at 10 px was not measured"):
        Predictor(scanned, device="cpu", tile=64, halo=10)
    with pytest.warns(UserWarning, match="no measured halo presets: the impulse-response halo"):
        assert Predictor(smp, device="cpu", tile=64, halo="exact").geometry.halo == 8
    with pytest.raises(ValueError, match="halo must be default or exact or a number of pixels"):
        InferenceOptions(halo="loose")


def test_a_halo_on_a_valid_unet_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="valid U-Net's tiles read its margin"):
        Predictor(tiny_bundle, device="cpu", halo=16)


def test_same_padded_default_chooses_the_tile_per_image_and_workers_follow(smp, isbi_slice):
    predictor = Predictor(smp, device="cpu", tile_rates=RATES)
    assert predictor.options.tile == "auto" and predictor.options.tile_rates == ((64, 1e6), (96, 1e6))
    # 160 px: 64 needs 4 x 4 tiles of 48² kept, 96 needs 2 x 2 of 80²; 144 px: 88 (between the
    # measured sizes) keeps 72² and fits it with 2 x 2 tiles
    assert predictor.tile_for(160, 160) == 96 and predictor.tile_for(144, 144) == 88
    assert predictor.grid(144, 144).tile_h == 88 == fit_tile(predictor.geometry, RATES, 144, 144).size
    assert len(predictor.grid(144, 144)) == 4
    image = isbi_slice[:160, :160]
    # a worker rebuilds the predictor from the resolved options: the same tiles, the same bytes
    worker = Predictor(smp, predictor.options)
    assert worker.tile_rates == predictor.tile_rates and worker.tile_for(160, 160) == 96
    full = predictor.predict(image, probabilities=True)
    block = worker.predict_region(image, 40, 160, 0, 100, worker.statistics(image), probabilities=True)
    assert np.array_equal(block.probabilities, full.probabilities[:, 40:160, :100])
    assert Predictor(smp, device="cpu", tile=64).options.tile_rates is None  # a given tile stays


def test_auto_measures_rates_once_per_process(smp):
    first = Predictor(smp, device="cpu", tile="auto")
    rates = dict(first.tile_rates)
    assert len(rates) >= 3 and all(r > 0 for r in rates.values()) and first.tile == max(rates, key=rates.get)
    assert Predictor(smp, device="cpu").tile_rates == first.tile_rates  # the default: the same measure


def test_precision_float32_switches_autocast_off(tiny_bundle, isbi_slice):
    image = isbi_slice[:200, :200]
    auto = Predictor(tiny_bundle, device="cpu").predict(image, probabilities=True)
    exact = Predictor(tiny_bundle, device="cpu", precision="float32")
    assert exact.options.precision == "float32" and exact.options.result_settings()["precision"] == "float32"
    assert np.array_equal(exact.predict(image, probabilities=True).probabilities, auto.probabilities)  # CPU auto: float32
    bf16 = Predictor(tiny_bundle, device="cpu", precision="bfloat16").predict(image, probabilities=True)
    assert 0 < np.abs(bf16.probabilities - auto.probabilities).max() < 0.1
    with pytest.raises(ValueError, match="precision 'float16' needs a CUDA device"):
        Predictor(tiny_bundle, device="cpu", precision="float16")
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, float16"):
        InferenceOptions(precision="half")


def test_options_round_trip_rates_from_json_lists():
    options = InferenceOptions(tile="auto", tile_rates=[[96, 2.0], [64, 1.0]], halo="12")
    assert options.tile_rates == ((64, 1.0), (96, 2.0)) and options.halo == 12
    assert InferenceOptions(**options.to_dict()) == options
    with pytest.raises(ValueError, match="tile_rates must map tile sizes >= 1 to positive rates"):
        InferenceOptions(tile_rates={64: 0.0})


def test_predict_cli_takes_halo_and_precision_and_warns_on_an_override(smp, tmp_path, isbi_slice):
    path = save_bundle(tmp_path / "smp.safetensors", smp.model, with_scan(smp.info, SCAN))
    Image.fromarray(isbi_slice[:150, :150]).save(tmp_path / "in.png")
    args = ["predict", str(path), str(tmp_path / "in.png"), "--tile", "64", "--precision", "float32", "--quiet"]
    with pytest.warns(UserWarning, match=r"99\.0000% of the pixels at 2 px"):
        assert main([*args, "-o", str(tmp_path / "two.png"), "--halo", "2"]) == 0
    assert main([*args, "-o", str(tmp_path / "exact.png"), "--halo", "exact"]) == 0
    expected = Predictor(path, device="cpu", tile=64, halo="exact").predict(isbi_slice[:150, :150]).labels
    written = read_image(tmp_path / "exact.png")
    assert np.array_equal(written > 0, expected > 0)
    assert main([*args, "-o", str(tmp_path / "x.png"), "--halo", "wide"]) == 2


def test_a_scanned_bundle_chooses_among_tiles_no_smaller_than_it_scanned(smp):
    scan = dataclasses.replace(SCAN, tiles=[512, 768])
    predictor = Predictor(Bundle(model=smp.model, info=with_scan(smp.info, scan)), device="cpu", tile="auto")
    assert min(dict(predictor.tile_rates)) == 512 and 768 in dict(predictor.tile_rates)


def test_a_gigapixel_job_with_a_per_image_tile_equals_the_in_process_prediction(smp, tmp_path):
    """Chunks are computed one by one, each by a predictor rebuilt from the job's resolved options
    (tile "auto" with the measured rates): the tile chosen for the whole image, the same bytes."""
    path = save_bundle(tmp_path / "smp.safetensors", smp.model, smp.info)
    pixels = make_slide(tmp_path / "slide.tif", 300, 260)
    rates = {64: 1e6, 96: 1.4e6}
    report = segment_gigapixel(path, tmp_path / "slide.tif", tmp_path / "out", chunk=128, tile_rates=rates)
    predictor = Predictor(path, device="cpu", tile_rates=rates)
    expected = predictor.predict(pixels).labels
    group = zarr.open_group(str(tmp_path / "out" / "slide.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], expected)
    assert report.ok and group.attrs["tessera"]["tile"] == predictor.tile_for(300, 260) == 92  # fits 300 x 260
