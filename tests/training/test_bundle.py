"""Bundles: round trip gives identical outputs; corrupt, truncated and foreign files are refused."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from tests.support.bundles import TINY_UNET, randomise_batchnorm
from training.bundle import BundleError, load_bundle, new_bundle_info, read_bundle_info, save_bundle
from training.models import build_model, parse_arch
from training.normalization import Normalization


@pytest.mark.parametrize(
    "spec",
    [TINY_UNET, parse_arch("smp.Unet:resnet18", in_channels=3, num_classes=3)],
    ids=["unet", "smp-unet-resnet18"],
)
def test_round_trip_gives_identical_outputs(tmp_path, spec):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(spec)).eval()
    normalization = Normalization(mode="fixed", mean=(0.5,) * spec["in_channels"], std=(0.2,) * spec["in_channels"])
    classes = [f"class{i}" for i in range(spec["num_classes"])]
    info = new_bundle_info(spec, model, classes, normalization, provenance={"seed": 0}, metrics={"dice": 0.5})
    path = save_bundle(tmp_path / "model.safetensors", model, info)

    loaded = load_bundle(path)
    size = model.geometry.input_size_for(40)
    x = torch.randn(2, spec["in_channels"], size, size)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))
    assert not loaded.model.training
    assert loaded.info.to_dict() == info.to_dict()
    assert loaded.info.classes == classes
    assert loaded.info.geometry == loaded.model.geometry
    assert read_bundle_info(path).normalization == normalization


def test_same_padded_bundle_records_a_measured_halo(tmp_path):
    spec = parse_arch("smp.Unet:resnet18", in_channels=1, num_classes=2)
    model = build_model(spec).eval()
    info = new_bundle_info(spec, model, ["a", "b"], Normalization())
    assert info.geometry.padding == "same"
    assert info.geometry.halo > 0 and info.geometry.halo % info.geometry.stride == 0
    assert info.tile["input"] > 2 * info.geometry.halo


def test_missing_file_is_named(tmp_path):
    with pytest.raises(BundleError, match="nope.safetensors: no such bundle file"):
        load_bundle(tmp_path / "nope.safetensors")


def test_truncated_bundle_is_refused(tiny_bundle):
    data = tiny_bundle.read_bytes()
    tiny_bundle.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"{tiny_bundle.name}: not a readable safetensors file"):
        load_bundle(tiny_bundle)


def test_garbage_and_pickles_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BundleError, match="evil.safetensors: not a readable safetensors file"):
        load_bundle(evil)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="junk.safetensors"):
        load_bundle(junk)


def test_foreign_safetensors_is_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(BundleError, match="foreign.safetensors: a safetensors file, but not a Tessera bundle"):
        load_bundle(foreign)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path, tiny_bundle):
    info = read_bundle_info(tiny_bundle)
    info.spec = {**info.spec, "width": 8}
    model = build_model(TINY_UNET)
    mismatched = save_bundle(tmp_path / "mismatched.safetensors", model, info)
    with pytest.raises(BundleError, match="mismatched.safetensors: weights do not fit"):
        load_bundle(mismatched)


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, tiny_bundle):
    assert [p.name for p in tiny_bundle.parent.iterdir()] == [tiny_bundle.name]
    with pytest.raises(ValueError, match="end in .safetensors"):
        save_bundle(tmp_path / "model.pt", build_model(TINY_UNET), read_bundle_info(tiny_bundle))


def test_decision_threshold_round_trips_and_bad_ones_are_refused(tmp_path):
    model = build_model(TINY_UNET).eval()
    info = new_bundle_info(TINY_UNET, model, ["a", "b"], Normalization())
    assert info.threshold is None and info.to_dict()["threshold"] is None
    info.threshold = 0.35
    assert read_bundle_info(save_bundle(tmp_path / "t.safetensors", model, info)).threshold == 0.35
    info.threshold = 1.5
    save_bundle(tmp_path / "bad.safetensors", model, info)
    with pytest.raises(BundleError, match="bad.safetensors: bundle metadata is invalid .*1.5 is not a probability"):
        load_bundle(tmp_path / "bad.safetensors")
    three = {**TINY_UNET, "num_classes": 3}
    model3 = build_model(three).eval()
    info3 = new_bundle_info(three, model3, ["a", "b", "c"], Normalization())
    info3.threshold = 0.5
    save_bundle(tmp_path / "three.safetensors", model3, info3)
    with pytest.raises(BundleError, match="three.safetensors: .*two-class model; this one has 3 classes"):
        read_bundle_info(tmp_path / "three.safetensors")
