"""``tessera info``: JSON a user can trust, errors a user can read."""

from __future__ import annotations

import json
import subprocess
import sys

from service.cli import main


def run_info(capsys, *args: str) -> dict:
    assert main(["info", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_for_the_paper_architecture(capsys):
    described = run_info(capsys, "--arch", "unet", "--norm", "none", "--size", "500")
    assert described["parameters"] == 31_030_658
    assert described["margin"] == 92
    assert described["requested_size_valid"] is False
    assert [s["input"] for s in described["valid_sizes"]] == [476, 492, 508, 524]
    assert {"input": 508, "output": 324, "step": 320} in described["valid_sizes"]


def test_info_for_a_bundle(capsys, tiny_bundle):
    described = run_info(capsys, str(tiny_bundle), "--size", "100")
    assert described["classes"] == ["background", "foreground"]
    assert described["margin"] == 20 and described["stride"] == 4
    assert described["normalization"]["mode"] == "image"
    assert described["spec"]["arch"] == "unet"
    assert described["threshold"] is None  # no calibrated threshold: labels are the argmax
    assert described["tta_thresholds"] == {}


def test_info_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a bundle")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tessera info: error:") and "bad.safetensors" in err and err.count("\n") == 1
    assert main(["info", "--arch", "smp.Nope"]) == 2


def test_console_script_help_teaches():
    result = subprocess.run([sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "tessera info --arch unet" in result.stdout
