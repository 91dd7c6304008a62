"""How ``tessera`` ends a run that fails: bad input is one line and exit 2, a full or read-only
disk and exhausted memory are one line naming the path (or the memory) and exit 3, anything else is
a bug shown with its traceback and exit 1.

The disk tests mount small tmpfs file systems (root or CAP_SYS_ADMIN, as in CI); where mounting is
not permitted they are skipped, saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import service.cli
from service.cli import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_USAGE, main
from training.io.writers import encode_png

ROOT = Path(service.cli.__file__).resolve().parents[1]
#: Files of a batch job's DST that are bookkeeping, not outputs.
BOOKKEEPING = {"manifest.jsonl", ".tessera-batch.lock"}


def tessera(*arguments: str) -> subprocess.CompletedProcess:
    """``python -m service.cli ARGUMENTS`` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "service.cli", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A small 1-channel PNG (64 x 80 px of noise: labels of a random model compress poorly)."""
    path = tmp_path / "in" / "image.png"
    path.parent.mkdir()
    path.write_bytes(encode_png(np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)))
    return path


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``mount(name, options)``: a fresh tmpfs at ``tmp_path/name`` with mount ``options``,
    unmounted at teardown; skips the test where mounting is not permitted."""
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no 'mount' command here to make a small tmpfs")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def fill(folder: Path) -> None:
    """Write a file in ``folder`` until its file system has no space left."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        with pytest.raises(OSError) as full:
            while True:
                handle.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def one_line(text: str) -> str:
    """The only line of ``text`` (fails when there are more)."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.png"
    result = tessera("predict", "default", str(missing), "-o", str(tmp_path / "labels.png"))
    assert result.returncode == EXIT_USAGE == 2
    assert one_line(result.stderr) == f"tessera predict: error: {missing}: no such file"
    assert not (tmp_path / "labels.png").exists()


@pytest.mark.parametrize("case", ["bundle", "option", "output format", "output under a file"])
def test_each_kind_of_bad_input_is_exit_2(case: str, tiny_bundle: Path, image: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    arguments, expected = {
        "bundle": ([str(tmp_path / "absent.safetensors"), str(image), "-o", str(tmp_path / "l.png")], "no such bundle file"),
        "option": ([str(tiny_bundle), str(image), "-o", str(tmp_path / "l.png"), "--tile", "big"], "--tile must be"),
        "output format": ([str(tiny_bundle), str(image), "-o", str(tmp_path / "l.jpg")], "unknown output format"),
        "output under a file": ([str(tiny_bundle), str(image), "-o", str(tmp_path / "a-file" / "l.png")], "cannot use this path"),
    }[case]
    assert main(["predict", *arguments, "--quiet"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith("tessera predict: error: ") and expected in line


def test_predict_into_a_full_disk_is_exit_3_naming_the_output(tiny_bundle: Path, image: Path, mount) -> None:
    disk = mount("disk", "size=64k")
    fill(disk)
    output = disk / "labels.png"
    result = tessera("predict", str(tiny_bundle), str(image), "-o", str(output), "--quiet")
    assert result.returncode == EXIT_ENVIRONMENT == 3
    assert one_line(result.stderr) == (f"tessera predict: error: no space left on device writing {output}: "
                                       "free space or choose another output folder")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no output, no temporary


def test_output_larger_than_the_disk_names_the_file_and_leaves_nothing(tiny_bundle: Path, image: Path, mount, capsys) -> None:
    """A memory-mapped .npy bigger than the free space fails as an error, not a SIGBUS."""
    disk = mount("disk", "size=64k")
    probabilities = disk / "p.npy"  # 2 x 64 x 80 float32: 40 KiB, the labels .npy beside it 5 KiB
    (disk / "filler").write_bytes(b"\0" * 40 * 1024)
    code = main(["predict", str(tiny_bundle), str(image), "-o", str(disk / "labels.npy"), "--probabilities", str(probabilities),
                 "--probability-dtype", "float32", "--quiet"])
    assert code == EXIT_ENVIRONMENT
    assert one_line(capsys.readouterr().err) == (f"tessera predict: error: no space left on device writing {probabilities}: "
                                                 "free space or choose another output folder")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_folder_job_into_a_full_disk_is_exit_3_naming_dst(tiny_bundle: Path, image: Path, mount, capsys) -> None:
    disk = mount("disk", "size=64k")
    fill(disk)
    dst = disk / "out"
    assert main(["batch", str(tiny_bundle), str(image.parent), str(dst), "--quiet"]) == EXIT_ENVIRONMENT
    assert one_line(capsys.readouterr().err) == (f"tessera batch: error: no space left on device writing {dst}: "
                                                 "free space or choose another output folder")
    assert {p.name for p in dst.iterdir()} <= BOOKKEEPING  # no output, no temporary
    assert (dst / "manifest.jsonl").read_bytes() == b""  # nothing recorded: a rerun starts afresh


def test_read_only_output_folder_is_exit_3_naming_the_path(tiny_bundle: Path, image: Path, mount, capsys) -> None:
    folder = mount("read-only", "ro,size=64k")
    output = folder / "labels.png"
    assert main(["predict", str(tiny_bundle), str(image), "-o", str(output), "--quiet"]) == EXIT_ENVIRONMENT
    assert one_line(capsys.readouterr().err) == (f"tessera predict: error: read-only file system: {output}: "
                                                 "choose an output folder on a writable disk")
    dst = folder / "out"
    assert main(["batch", str(tiny_bundle), str(image.parent), str(dst), "--quiet"]) == EXIT_ENVIRONMENT
    assert one_line(capsys.readouterr().err).startswith(f"tessera batch: error: read-only file system: {dst}: ")
    assert os.listdir(folder) == []


def test_permission_denied_and_out_of_memory_are_exit_3(monkeypatch, capsys) -> None:
    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/slides/a.tif")

    monkeypatch.setattr("service.commands.info.run", denied)
    assert main(["info"]) == EXIT_ENVIRONMENT
    assert one_line(capsys.readouterr().err) == ("tessera info: error: permission denied: /data/slides/a.tif: "
                                                 "choose a path this user may use, or change its permissions")

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr("service.commands.info.run", exhausted)
    assert main(["info"]) == EXIT_ENVIRONMENT
    assert "out of memory: use a smaller --tile or --batch-size" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("bug", [RuntimeError("boom"), ValueError("an invariant broke"),
                                 FileNotFoundError(errno.ENOENT, "No such file or directory", "/tmp/tessera-internal")])
def test_a_bug_shows_its_traceback_and_exits_1(bug: Exception, monkeypatch, capsys) -> None:
    """Anything that is not bad input or the machine's failure, ValueError and OSError included."""
    def broken(args):
        raise bug

    monkeypatch.setattr("service.commands.info.run", broken)
    assert main(["info"]) == EXIT_FAILED == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{type(bug).__name__}: {bug}" in err and "in broken" in err
    assert err.splitlines()[-1] == "tessera info: internal error (a bug; the traceback above says where)"
