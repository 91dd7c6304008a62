"""ONNX and torch.export exports: logits within 1e-4 of eager PyTorch, equal labels, metadata kept,
dynamic batch and sizes, and the exported graphs running through the one predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.exact import assert_exact
from tests.support.export import (
    CLASSIFIER_SIZE,
    Exported,
    build_bundle,
    export_both,
    parity_sizes,
    random_input,
    real_input,
)
from tests.support.paths import ISBI
from training.bundle import BundleError, load_bundle, read_bundle_info, save_bundle
from training.export.metadata import EXPORT_KEY, sidecar_path
from training.inference.backends.onnxruntime import OnnxRuntimeModel
from training.inference.backends.program import ProgramModel
from training.inference.predictor import Predictor
from training.io.images import read_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODELS = ("shipped", "unet8", "smp18", "classifier")
#: Largest |logit difference| an export may show from eager PyTorch.
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``get(name)``: the model ``name`` exported once for the whole module (exports take seconds)."""
    done: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            done[name] = export_both(build_bundle(name, folder), folder)
        return done[name]

    return get


@pytest.fixture(scope="module", params=MODELS)
def exported(request, exports) -> Exported:
    return exports(request.param)


@pytest.fixture(scope="module")
def unet8(exports) -> Exported:
    return exports("unet8")


def assert_same_labels(reference: torch.Tensor, other: torch.Tensor) -> None:
    """Equal argmax over classes (axis 1), except where the two likeliest logits of the reference
    lie within the difference of the two runs (a float tie), at most one such pixel."""
    differ = reference.argmax(1) != other.argmax(1)
    if differ.any():
        top = reference.topk(2, dim=1).values
        margin = (top[:, 0] - top[:, 1])[differ]
        assert differ.sum() <= 1 and (margin <= 2 * (reference - other).abs().max()).all()


@pytest.mark.parametrize("source", ["random", "real"])
def test_exports_match_eager_logits_and_labels_at_two_sizes(exported, source):
    bundle = exported.bundle
    runs = {"onnx": load_bundle(exported.onnx).model, "pt2": load_bundle(exported.program).model}
    for index, shape in enumerate(parity_sizes(bundle.info)):
        batch = random_input(shape, bundle.info.in_channels, seed=index) if source == "random" else real_input(shape)
        with torch.no_grad():
            reference = bundle.model(batch)
            for name, model in runs.items():
                logits = model(batch)
                assert logits.shape == reference.shape, (name, shape)
                assert (logits - reference).abs().max() <= LOGIT_TOLERANCE, (name, shape)
                assert_same_labels(reference, logits)
    assert reference.abs().max() > 0.1  # the logits compared are not all near zero


def test_exports_carry_the_bundle_metadata_and_the_size_rule(exported):
    info = exported.bundle.info
    for path in (exported.onnx, exported.program):
        loaded = load_bundle(path)
        assert loaded.info.to_dict() == info.to_dict() and loaded.path == path
        assert read_bundle_info(path).to_dict() == info.to_dict()
    record = load_bundle(exported.onnx).model.record
    assert record.format == "onnx" and record.opset == 18 and record.source["name"] == exported.bundle.path.name
    rules = {"default": "188 + 16k", "unet8": "92 + 8k", "smp18": "a multiple of 32",
             "classifier": f"exactly {CLASSIFIER_SIZE}"}
    assert record.sizes.rule == rules[exported.bundle.path.stem]
    beside = json.loads(sidecar_path(exported.program).read_text())
    assert beside["tessera"] == info.to_dict() and beside[EXPORT_KEY]["format"] == "pt2"


def test_onnx_graph_declares_dynamic_batch_and_sizes(exported):
    import onnxruntime  # noqa: PLC0415  the export extra

    session = onnxruntime.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    (image,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (image.name, logits.name) == ("image", "logits")
    assert isinstance(image.shape[0], str) and image.shape[1] == exported.bundle.info.in_channels
    if exported.bundle.info.task == "segmentation":
        assert all(isinstance(side, str) for side in image.shape[2:])  # e.g. '16*height_steps + 188'
    else:
        assert image.shape[2:] == [CLASSIFIER_SIZE, CLASSIFIER_SIZE]


def test_exported_models_refuse_sizes_the_graph_does_not_take(unet8):
    for path in (unet8.onnx, unet8.program):
        model = load_bundle(path).model
        with pytest.raises(ValueError, match=r"input height 93 is not valid .* 92 \+ 8k"):
            model(torch.zeros(1, 1, 93, 92))
        with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
            model(torch.zeros(1, 3, 92, 92))


def test_predictor_on_onnx_tiles_exactly_and_matches_the_bundle(unet8):
    image = np.random.default_rng(3).integers(0, 255, (300, 261), dtype=np.uint8)
    onnx = Predictor(unet8.onnx, device="cpu", tile=156, batch_size=3)
    assert isinstance(onnx.model, OnnxRuntimeModel) and len(list(onnx.grid(300, 261).tiles())) == 25
    tiled = onnx.predict(image, probabilities=True)
    assert_exact(tiled, onnx.predict_whole(image))
    eager = Predictor(unet8.bundle, device="cpu", tile=156).predict(image, probabilities=True)
    assert np.abs(eager.probabilities - tiled.probabilities).max() <= 1e-5
    np.testing.assert_array_equal(eager.labels, tiled.labels)
    assert 0.1 < tiled.labels.mean() < 0.9  # both classes: the comparison means something


def test_predictor_on_pt2_tiles_exactly(unet8):
    image = np.random.default_rng(4).integers(0, 255, (200, 170), dtype=np.uint8)
    predictor = Predictor(unet8.program, device="cpu", tile=156, tta="flips")
    assert isinstance(predictor.model, ProgramModel)
    assert_exact(predictor.predict(image, probabilities=True), predictor.predict_whole(image))


def test_shipped_model_and_its_exports_give_equal_labels_on_a_real_slice(exports):
    exported = exports("shipped")
    bundle = exported.bundle
    pixels = read_image(ISBI / "image" / "25.png")
    eager = Predictor(bundle, device="cpu").predict(pixels, probabilities=True)
    for path in (exported.onnx, exported.program):
        predictor = Predictor(path, device="cpu")
        assert predictor.threshold == bundle.info.threshold == 0.15 and predictor.tile == 700
        result = predictor.predict(pixels, probabilities=True)
        assert np.abs(result.probabilities - eager.probabilities).max() <= 1e-5
        differ = result.labels != eager.labels  # only where p1 sits on the threshold (float round-off)
        assert (np.abs(eager.probabilities[1][differ] - 0.15) <= 1e-5).all() and differ.sum() <= 2


def test_a_file_that_is_not_a_tessera_export_is_refused(tmp_path, unet8):
    import onnx  # noqa: PLC0415  the export extra
    from onnx import TensorProto, helper  # noqa: PLC0415  the export extra

    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(BundleError, match=r"plain.onnx: not a Tessera export"):
        load_bundle(tmp_path / "plain.onnx")
    (tmp_path / "broken.onnx").write_bytes(unet8.onnx.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"broken.onnx: not a readable ONNX model"):
        load_bundle(tmp_path / "broken.onnx")
    (tmp_path / "broken.pt2").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"broken.pt2: not a readable torch.export program"):
        load_bundle(tmp_path / "broken.pt2")
    with pytest.raises(BundleError, match=r"missing.onnx: no such model file"):
        load_bundle(tmp_path / "missing.onnx")


def test_without_onnxruntime_loading_names_the_extra(unet8, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # what an absent package does
    with pytest.raises(BundleError, match=r"needs the 'onnxruntime' package: pip install 'tessera\[export\]'"):
        load_bundle(unet8.onnx)


def test_an_exported_model_is_not_saved_as_a_bundle(unet8, tmp_path):
    for path in (unet8.onnx, unet8.program):
        exported = load_bundle(path)
        with pytest.raises(ValueError, match="an exported model .* cannot be saved as a bundle"):
            save_bundle(tmp_path / "copy.safetensors", exported.model, exported.info)
