"""``POST /jobs?path=`` under TESSERA_DATA_ROOT: a real server, a real slide, each refusal a 4xx."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import zarr
import zarr.storage

from service.cli import main as tessera
from tests.support.server import serve
from tests.support.slides import tissue_image, write_svs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_svs(root / "case.svs", tissue_image(300, 400, seed=2), mpp=0.5, levels=2)
    (root / "notes.txt").write_text("not a slide")
    outside = tmp_path_factory.mktemp("outside") / "secret.svs"
    write_svs(outside, tissue_image(300, 400), levels=2)
    os.symlink(outside, root / "link.svs")
    return root


@pytest.fixture(scope="module")
def url(store: Path, service_bundle: Path, tmp_path_factory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("bentoml-home-slides")
    with serve(service_bundle, home, {"TESSERA_DATA_ROOT": str(store)}) as address:
        yield address


def submit(url: str, fields: dict) -> httpx.Response:
    """``POST /jobs?path=...``, then the result once the job has ended (or the refusal)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        submitted = client.post("/jobs", params=fields)
        if submitted.status_code != 202:
            return submitted
        job = submitted.json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/jobs/{job}").json()["status"] in ("in_progress", "pending"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        status = client.get(f"/jobs/{job}").json()
        assert status["tiles_total"] and status["tiles_done"] == status["tiles_total"], status
        return client.get(f"/jobs/{job}/result")


def test_a_slide_by_path_equals_tessera_predict(url: str, store: Path, service_bundle: Path, tmp_path: Path) -> None:
    response = submit(url, {"path": "case.svs"})
    assert response.status_code == 200, response.text
    (tmp_path / "job.tif").write_bytes(response.content)
    assert tessera(["predict", str(service_bundle), str(store / "case.svs"), "-o", str(tmp_path / "cli.tif"), "--quiet",
                    "--device", "cpu"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "job.tif"), tifffile.imread(tmp_path / "cli.tif"))


def test_a_slide_by_path_as_zarr_is_the_ome_zarr_label_image(url: str, store: Path, service_bundle: Path,
                                                              tmp_path: Path) -> None:
    response = submit(url, {"path": "case.svs", "format": "zarr"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    (tmp_path / "job.zarr.zip").write_bytes(response.content)
    assert tessera(["predict", str(service_bundle), str(store / "case.svs"), "-o", str(tmp_path / "cli.zarr"), "--quiet",
                    "--device", "cpu"]) == 0
    job = zarr.open_group(zarr.storage.ZipStore(tmp_path / "job.zarr.zip", mode="r"), mode="r")
    cli = zarr.open_group(str(tmp_path / "cli.zarr"), mode="r")
    np.testing.assert_array_equal(job["0"][:], cli["0"][:])
    multiscales = job.attrs["ome"]["multiscales"][0]
    expected = cli.attrs["ome"]["multiscales"][0]
    assert (multiscales["datasets"], multiscales["axes"]) == (expected["datasets"], expected["axes"])
    assert [axis.get("unit") for axis in multiscales["axes"]] == ["micrometer", "micrometer"]
    for level, dataset in enumerate(multiscales["datasets"]):  # the pyramid: every other pixel per level
        np.testing.assert_array_equal(job[dataset["path"]][:], cli["0"][:: 2**level, :: 2**level])


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [("/etc/passwd", 422, "absolute_path"), ("../outside/secret.svs", 422, "parent_path"),
     ("link.svs", 422, "outside_root"), ("missing.svs", 404, "not_found"), ("notes.txt", 415, "not_a_slide")],
)
def test_refusals_name_their_reason(url: str, path: str, status: int, reason: str) -> None:
    response = submit(url, {"path": path})
    assert response.status_code == status, response.text
    assert reason in response.text
