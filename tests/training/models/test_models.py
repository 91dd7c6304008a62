"""Models: shapes, parameter counts, forward and backward, transfer of classifier backbones.

Each family subclasses :class:`BaseModelTester` (as segmentation-models-pytorch's tests do) and
declares a spec and a valid input size.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from training.geometry import InvalidSizeError
from training.models import PAPER_UNET, build_model, count_parameters, load_encoder_weights, parse_arch
from training.models.unet import UNet


def test_paper_unet_parameter_counts():
    assert count_parameters(build_model({**PAPER_UNET, "norm": "none"})) == 31_030_658
    assert count_parameters(build_model(PAPER_UNET)) == 31_042_434


@torch.inference_mode()
def test_paper_unet_maps_572_to_388():
    model = build_model(PAPER_UNET).eval()
    assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


class BaseModelTester:
    """Forward and backward for one model family; subclasses set ``spec`` and ``size``."""

    spec: dict
    size: int
    batch = 2
    #: Parameters the family builds but never uses in forward (smp keeps efficientnet's head).
    unused: tuple[str, ...] = ()

    def output_size(self, model) -> int:
        return model.geometry.output_size(self.size)

    def test_forward_shape_and_backward(self):
        torch.manual_seed(0)
        model = build_model(self.spec).train()
        x = torch.randn(self.batch, self.spec["in_channels"], self.size, self.size)
        y = model(x)
        out = self.output_size(model)
        assert y.shape == (self.batch, self.spec["num_classes"], out, out)
        y.square().mean().backward()
        grads = [p.grad for name, p in model.named_parameters() if not name.startswith(self.unused)]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0

    def test_eval_is_deterministic(self):
        model = build_model(self.spec).eval()
        x = torch.randn(1, self.spec["in_channels"], self.size, self.size)
        with torch.inference_mode():
            assert torch.equal(model(x), model(x))


class TestUNetValid(BaseModelTester):
    spec = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 3, "width": 4, "padding": "valid"}
    size = 92 + 8 * 3  # min input 92 at depth 3, then steps of 8


class TestUNetSame(BaseModelTester):
    spec = {"arch": "unet", "in_channels": 3, "num_classes": 3, "depth": 3, "width": 4, "padding": "same", "norm": "instance"}
    size = 64


class TestUNetPaperNoNorm(BaseModelTester):
    spec = {"arch": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "width": 4, "norm": "none", "dropout": 0.5}
    size = 44


class TestSmpUnetResnet18(BaseModelTester):
    spec = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 1, "num_classes": 2}
    size = 64


class TestSmpFPNEfficientNet(BaseModelTester):
    spec = {"arch": "smp", "name": "FPN", "encoder": "efficientnet-b0", "in_channels": 3, "num_classes": 4}
    size = 64
    unused = ("encoder._conv_head.", "encoder._bn1.")


@pytest.mark.parametrize("size", [100, 101, 187])
def test_unet_refuses_invalid_sizes_with_nearest(size):
    model = UNet(depth=4, width=2).eval()
    with pytest.raises(InvalidSizeError, match="nearest"):
        model(torch.zeros(1, 1, size, 188))


def test_unknown_arch_and_encoder_are_named():
    with pytest.raises(ValueError, match="unknown architecture 'vnet'"):
        parse_arch("vnet")
    with pytest.raises(ValueError, match="no-such-encoder"):
        build_model({"arch": "smp", "name": "Unet", "encoder": "no-such-encoder", "in_channels": 1, "num_classes": 2})


def test_classifier_encoder_transfers_into_smp_unet(tmp_path):
    torch.manual_seed(1)
    classifier = build_model(parse_arch("classifier:resnet18", in_channels=1, num_classes=10))
    assert classifier(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    weights = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(weights))
    unet = build_model(parse_arch("smp.Unet:resnet18", in_channels=1, num_classes=2))
    load_encoder_weights(unet.encoder, weights)
    for key, value in unet.encoder.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[f"encoder.{key}"]), key


def test_torchvision_state_dict_loads_with_channel_adaptation(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    unet = build_model(parse_arch("smp.Unet:resnet18", in_channels=1, num_classes=2))
    load_encoder_weights(unet.encoder, path)
    assert torch.allclose(unet.encoder.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(unet.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_foreign_weights_are_refused_by_name(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(3)}, str(path))
    unet = build_model(parse_arch("smp.Unet:resnet18", in_channels=1, num_classes=2))
    with pytest.raises(ValueError, match="other.safetensors: not weights for this encoder"):
        load_encoder_weights(unet.encoder, path)
