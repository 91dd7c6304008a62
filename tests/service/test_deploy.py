"""Deployment files: the Dockerfile lints clean, the build context holds what the image needs and
nothing else, the bentofile names the real service and the project's pins, a built Bento serves,
and (with TESSERA_DOCKER_SMOKE=1) the real container smoke test passes."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import bentoml
import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.server import free_port, stop_process_group

BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
BENTOFILE = ROOT / "bentofile.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: A Dockerfile with the mistakes hadolint exists to catch (latest tag, unpinned apt, cd in RUN).
BAD_DOCKERFILE = "FROM python:latest\nRUN cd /tmp && apt-get install curl\n"


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfile_is_hadolint_clean():
    result = hadolint(DOCKERFILE)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    result = hadolint(bad)
    assert result.returncode == 1
    assert {"DL3007", "DL3003", "DL3008"} <= set(re.findall(r"DL\d{4}", result.stdout))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_installs_pins_before_the_source_and_runs_as_a_non_root_user():
    steps = instructions(DOCKERFILE)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    index = {f"{op} {args}": i for i, (op, args) in enumerate(final)}
    installs = [i for key, i in index.items() if key.startswith("RUN pip install --no-cache-dir -r")]
    source = [i for key, i in index.items() if key.startswith("COPY training")]
    assert len(installs) == 2 and len(source) == 1 and max(installs) < source[0]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("0", "root")
    assert ("EXPOSE", "3000") in final
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:3000/readyz" in health[0] and "curl" not in health[0]
    env = " ".join(args for op, args in final if op == "ENV")
    assert "BENTOML_HOME=/home/tessera/bentoml" in env


def test_pinned_requirements_are_the_pyproject_pins():
    script = ROOT / "scripts" / "pinned-requirements"
    every = subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), "--extra", "docker"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert every == PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["docker"]
    heavy = subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), "--only", "torch", "torchvision"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert heavy == ["torch==2.14.1", "torchvision==0.29.1"]
    failed = subprocess.run([sys.executable, str(script), "--extra", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 2 and "no optional-dependencies group 'nope'" in failed.stderr


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def glob_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    tokens = re.split(r"(\*\*/?|\*|\?)", pattern)
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(translated.get(t, re.escape(t)) for t in tokens))


def test_dockerignore_sends_the_image_its_files_and_keeps_the_rest_out():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sent = ["pyproject.toml", "README.md", "scripts/pinned-requirements", "service/cli.py", "training/bundle.py",
            "training/models/unet.py", "training/assets/default.safetensors", "training/assets/isbi2012/image/25.png"]
    kept_out = [".git/HEAD", ".venv/bin/python", "venv/lib/x.py", "tests/test_deploy.py", "tests/conftest.py",
                ".pytest_cache/v/cache", "training/__pycache__/bundle.cpython-311.pyc",
                "service/commands/__pycache__/info.cpython-311.pyc", "tessera.egg-info/PKG-INFO",
                "runs/train/best.safetensors", "bench/tiling.py", "Dockerfile", "docs/deploy.md"]
    assert [p for p in sent if dockerignore_excludes(p, patterns)] == []
    assert [p for p in kept_out if not dockerignore_excludes(p, patterns)] == []


def test_saved_bundles_are_readable_by_a_container_running_under_another_uid(tiny_bundle):
    assert tiny_bundle.stat().st_mode & 0o777 == 0o644


def bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def test_bentofile_names_the_real_service_class():
    module_name, _, attribute = bentofile()["service"].partition(":")
    service = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(service, bentoml.Service)
    assert service.inner.__module__ == module_name and service.inner.__name__ == attribute


def test_bentofile_pins_exactly_the_project_dependencies():
    config = bentofile()
    assert config["python"]["packages"] == PYPROJECT["dependencies"]
    assert "torch==2.14.1" in config["python"]["packages"]
    assert config["python"]["lock_packages"] is False
    assert "cuda_version" not in config.get("docker", {})
    assert "training/assets/default.safetensors" in config["include"]


def wait_ready(url: str, process: subprocess.Popen, seconds: float) -> int:
    """Poll ``url`` until it answers 200; returns the last status (0: no answer)."""
    status, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        if status == 200:
            break
        time.sleep(1)
    return status


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_that_serves(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TESSERA_BUNDLE", None)
    built = subprocess.run([str(BIN / "bentoml"), "build", "--output", "tag"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("tessera:")
    name, version = tag.split(":")
    source = tmp_path / "bentoml" / "bentos" / name / version / "src"
    assert (source / "training" / "assets" / "default.safetensors").is_file()
    assert (source / "service" / "cli.py").is_file()
    assert not (source / "tests").exists() and not list(source.rglob("__pycache__"))
    requirements = (source.parent / "env" / "python" / "requirements.txt").read_text().split()
    assert set(PYPROJECT["dependencies"]) <= set(requirements)

    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen([str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        status = wait_ready(f"http://127.0.0.1:{port}/readyz", server, seconds=180)
    finally:
        stop_process_group(server)
    assert status == 200, log.read_text(errors="replace")[-3000:]


@pytest.mark.skipif(os.environ.get("TESSERA_DOCKER_SMOKE") != "1", reason="set TESSERA_DOCKER_SMOKE=1 (takes minutes)")
def test_docker_smoke():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-smoke")], cwd=ROOT, timeout=3600)
    assert result.returncode == 0
