"""Nothing downloads: models build and load local weights with every socket refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import socket

    class Blocked(OSError):
        pass

    def refuse(*args, **kwargs):
        raise Blocked("network access attempted")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    import torch
    from safetensors.torch import save_file
    from training.models import build_model, load_encoder_weights, parse_arch

    built = []
    for text in ["unet", "smp.Unet:resnet34", "smp.FPN:efficientnet-b0", "smp.UnetPlusPlus:resnet18",
                 "smp.DeepLabV3Plus:mobilenet_v2", "classifier:resnet18"]:
        model = build_model(parse_arch(text, in_channels=3, num_classes=2))
        built.append(text)

    classifier = build_model(parse_arch("classifier:resnet34", in_channels=3, num_classes=5))
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, "{weights}")
    unet = build_model(parse_arch("smp.Unet:resnet34", in_channels=3, num_classes=2))
    load_encoder_weights(unet.encoder, "{weights}")
    assert torch.equal(unet.encoder.conv1.weight, classifier.encoder.conv1.weight)
    try:
        socket.create_connection(("127.0.0.1", 9))
    except Blocked:
        print("blocked-ok", len(built))
    """
)


def test_models_build_and_load_with_network_blocked(tmp_path):
    script = SCRIPT.replace("{weights}", str(tmp_path / "classifier.safetensors"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("blocked-ok 6")
