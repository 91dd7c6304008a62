"""``tessera export`` end to end on a tiny bundle, the Triton repository it writes (its config
parsed with Triton's own protobuf definitions), and the exported file through predict and batch."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.batch import segment_folder
from service.cli import build_parser, main
from service.commands.export import EXAMPLES
from tests.support.bundles import TINY_UNET, make_bundle
from tests.support.export import CLASSIFIER, CLASSIFIER_SIZE
from training.bundle import BundleInfo, load_bundle, save_bundle
from training.export.program import ExportError, check_exportable
from training.export.triton import config_text, max_batch
from training.inference.predictor import Predictor
from training.io.images import read_image
from training.io.writers import encode_png
from training.models import build_model, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny bundle (calibrated threshold 0.4) exported by the CLI to ONNX, .pt2 and Triton."""
    folder = tmp_path_factory.mktemp("export")
    bundle = make_bundle(TINY_UNET, probe="noise", each_class=True)
    bundle.info.threshold = 0.4
    path = save_bundle(folder / "tiny.safetensors", bundle.model, bundle.info)
    argv = ["export", str(path), "-o", str(folder / "tiny.onnx"), "-o", str(folder / "tiny.pt2"),
            "--triton", str(folder / "repo"), "--name", "membranes"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (folder / "report.json").write_text(printed.getvalue())
    return folder


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_cli_writes_both_formats_checked_against_the_bundle(written):
    report = json.loads((written / "report.json").read_text())
    onnx, pt2 = report["outputs"]
    assert (onnx["format"], onnx["opset"], pt2["format"]) == ("onnx", 18, "pt2")
    assert onnx["input_sizes"] == pt2["input_sizes"] == "44 + 4k"
    assert onnx["max_abs_logit_diff"] <= 1e-4 and pt2["max_abs_logit_diff"] <= 1e-4
    assert (written / "tiny.pt2.json").is_file() and report["triton"] == str(written / "repo" / "membranes")


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.pt2"])
def test_info_counts_the_parameters_of_an_export(written, name, capsys):
    assert main(["info", str(written / name)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["parameters"] == count_parameters(load_bundle(written / "tiny.safetensors").model) > 0


def test_triton_repository_layout_and_config(written):
    root = written / "repo" / "membranes"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "1", "1/model.onnx", "README.md", "config.pbtxt"]
    assert (root / "1" / "model.onnx").read_bytes() == (written / "tiny.onnx").read_bytes()
    config = parse_config(root / "config.pbtxt")
    assert config.name == "membranes" and config.backend == "onnxruntime"
    assert config.max_batch_size == 8  # 556 px default tiles: 8 fit the 4 Mi px batch budget
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    (image,), (logits,) = config.input, config.output
    assert (image.name, list(image.dims), image.data_type) == ("image", [1, -1, -1], model_config_pb2.TYPE_FP32)
    assert (logits.name, list(logits.dims), logits.data_type) == ("logits", [2, -1, -1], model_config_pb2.TYPE_FP32)
    readme = (root / "README.md").read_text()
    for fact in ("44 + 4k", "556 x 556 px", "probability >= 0.4", "WHOLE image", "BORDER_REFLECT_101", "exactly"):
        assert fact in readme, fact
    assert load_bundle(root / "1" / "model.onnx").info.threshold == 0.4


def test_triton_config_of_a_classifier_has_fixed_sizes_and_flat_output():
    info = BundleInfo(spec=CLASSIFIER, classes=["a", "b", "c"], in_channels=1, task="classification",
                      tile={"input": CLASSIFIER_SIZE})
    config = text_format.Parse(config_text("digits", info), model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == [1, CLASSIFIER_SIZE, CLASSIFIER_SIZE] and list(config.output[0].dims) == [3]
    assert config.max_batch_size == 64


@pytest.mark.parametrize(("tile", "batch"), [(700, 8), (1024, 4), (512, 16), (64, 64), (4096, 1)])
def test_max_batch_follows_the_tile_size(tile, batch):
    info = BundleInfo(spec=TINY_UNET, classes=["a", "b"], in_channels=1, tile={"input": tile})
    assert max_batch(info) == batch


def test_predict_and_batch_run_the_onnx_file(written, tmp_path):
    rng = np.random.default_rng(5)
    images = {f"img{i}.png": rng.integers(0, 255, (90 + 7 * i, 130), dtype=np.uint8) for i in range(2)}
    (tmp_path / "src").mkdir()
    for name, pixels in images.items():
        (tmp_path / "src" / name).write_bytes(encode_png(pixels))
    model = written / "tiny.onnx"
    bundle = Predictor(written / "tiny.safetensors", device="cpu")
    assert main(["predict", str(model), str(tmp_path / "src" / "img0.png"), "-o", str(tmp_path / "mask.png")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "mask.png"), bundle.predict(images["img0.png"]).labels)
    report = segment_folder(model, tmp_path / "src", tmp_path / "dst")
    assert report.ok and report.succeeded == 2
    for name, pixels in images.items():
        np.testing.assert_array_equal(read_image(tmp_path / "dst" / name), bundle.predict(pixels).labels)


@pytest.mark.parametrize(("argv", "message"), [
    (["-o", "model.txt"], "model.txt: exports end in .onnx (ONNX) or .pt2 (torch.export)"),
    (["-o", "model.onnx", "--opset", "12"], "opset 12 is not supported: the exporter writes opsets 18 to 23"),
    ([], "nothing to write"),
])
def test_cli_refuses_with_one_line(written, tmp_path, capsys, argv, message):
    assert main(["export", str(written / "tiny.safetensors"), *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_classifier_bundle_without_its_image_size_is_refused(tmp_path, capsys):
    info = BundleInfo(spec=CLASSIFIER, classes=["a", "b", "c"], in_channels=1, task="classification")
    path = save_bundle(tmp_path / "digits.safetensors", build_model(CLASSIFIER), info)
    assert main(["export", str(path), "-o", str(tmp_path / "digits.onnx")]) == 2
    assert "does not say the image size it was trained on" in capsys.readouterr().err
    with pytest.raises(ExportError):
        check_exportable(info)


def test_help_examples_parse_as_written():
    lines = [line.strip() for line in EXAMPLES.splitlines() if line.strip().startswith("tessera ")]
    assert len(lines) == 4
    for line in lines:
        argv = shlex.split(line)[1:]
        args = build_parser(argv).parse_args(argv)
        assert args.command in ("export", "predict")
