"""The one inference options object: checked once when made, a stable key, the keyword form the
predictor and the batch jobs accept, and the resolved options a predictor hands to workers."""

from __future__ import annotations

import numpy as np
import pytest

from service.batch import prepare
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor


def test_defaults_and_normalised_fields() -> None:
    options = InferenceOptions()
    assert options.to_dict() == {"tile": None, "batch_size": None, "tta": "none", "blend": "none", "overlap": 0.25,
                                 "sigma_scale": 0.125, "threshold": "bundle", "device": "auto",
                                 "halo": None, "precision": "auto", "tile_rates": None}
    assert InferenceOptions(tta=True).tta == "d4" and InferenceOptions(tta=False).tta == "none"
    assert InferenceOptions(tile="572").tile == 572 and InferenceOptions(tile="auto").tile == "auto"
    assert InferenceOptions(threshold="0.4").threshold == 0.4 and InferenceOptions(threshold=None).threshold is None
    assert InferenceOptions(overlap=1 / 2).overlap == 0.5


@pytest.mark.parametrize("fields,message", [
    ({"tile": "big"}, "tile must be a number of pixels or 'auto'"),
    ({"tile": 0}, "tile must be"),
    ({"tile": 1.5}, "tile must be"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"tta": "sideways"}, "tta must be one of none, flips, d4"),
    ({"blend": "linear"}, "blend must be one of none, gaussian"),
    ({"blend": "gaussian", "overlap": 1.0}, "overlap must be a fraction"),
    ({"sigma_scale": 0.0}, "sigma_scale must be > 0"),
    ({"threshold": 1.5}, "1.5 is not a probability"),
    ({"threshold": "high"}, "threshold must be 'bundle', None or a probability"),
])
def test_bad_fields_are_refused_when_made(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        InferenceOptions(**fields)
    with pytest.raises(ValueError, match=message):
        InferenceOptions().replace(**fields)


def test_key_is_stable_and_names_every_field() -> None:
    options = InferenceOptions(tile=92, tta="flips", blend="gaussian", threshold=0.3)
    assert options.key() == InferenceOptions.build(tile=92, tta="flips", blend="gaussian", threshold=0.3).key()
    assert options == InferenceOptions(**options.to_dict()) and hash(options) == hash(InferenceOptions(**options.to_dict()))
    others = [options.replace(**{name: value}) for name, value in
              {"tile": 96, "batch_size": 2, "tta": "d4", "blend": "none", "overlap": 0.5, "sigma_scale": 0.25,
               "threshold": None, "device": "cpu"}.items()]
    assert len({options.key(), *(o.key() for o in others)}) == 1 + len(others)


def test_result_settings_name_what_decides_the_numbers() -> None:
    assert InferenceOptions(tile=92, batch_size=4, device="cpu").result_settings() == {"tile": 92, "tta": "none"}
    blended = InferenceOptions(tile=92, blend="gaussian", overlap=0.5, threshold=0.3).result_settings()
    assert blended == {"tile": 92, "tta": "none", "blend": ["gaussian", 0.5], "threshold": 0.3}
    assert InferenceOptions(blend="gaussian", sigma_scale=0.25).result_settings()["sigma_scale"] == 0.25


def test_build_replaces_fields_of_the_given_options() -> None:
    base = InferenceOptions(tile=92, tta="flips")
    assert InferenceOptions.build(base) is base
    assert InferenceOptions.build(base, tta="d4") == InferenceOptions(tile=92, tta="d4")
    assert InferenceOptions.build(tile=92) == InferenceOptions(tile=92)
    with pytest.raises(TypeError):
        InferenceOptions.build(tiles=92)


def test_predictor_resolves_its_options_and_they_rebuild_it(tiny_bundle) -> None:
    predictor = Predictor(tiny_bundle, device="cpu", blend="gaussian", threshold=0.3)
    resolved = predictor.options
    assert isinstance(resolved.tile, int) and resolved.tile == predictor.tile
    assert resolved.batch_size == predictor.batch_size == 1  # the CPU default
    assert (resolved.blend, resolved.threshold, resolved.device) == ("gaussian", 0.3, "cpu")
    assert (predictor.blend, predictor.overlap, predictor.sigma_scale, predictor.threshold) == ("gaussian", 0.25, 0.125, 0.3)
    again = Predictor(tiny_bundle, resolved)
    assert again.options == resolved
    image = np.random.default_rng(0).integers(0, 256, (70, 90), dtype=np.uint8)
    np.testing.assert_array_equal(again.predict(image).labels, predictor.predict(image).labels)
    keyword = Predictor(tiny_bundle, InferenceOptions(device="cpu"), blend="gaussian", threshold=0.3)
    assert keyword.options == resolved


def test_a_batch_spec_carries_the_resolved_options(tiny_bundle) -> None:
    spec, predictor = prepare(tiny_bundle, InferenceOptions(device="cpu"), tta="flips")
    assert spec.options == predictor.options and spec.options.tta == "flips" and isinstance(spec.options.tile, int)
    assert spec.bundle == str(tiny_bundle.resolve())
