"""The page at ``/ui`` in a real headless browser (Debian's chromium driven by Playwright), against
a real server of the shipped model.

An ISBI slice is uploaded through the page's file input; the overlay the page draws must equal
``POST /segment?output=overlay`` pixel for pixel, its class areas the JSON route's; a file that is
not an image must show the API's own error message; a job (forced by the page's ``job_pixels``
parameter) must show its progress and end with a download link. Screenshots (1280x800 and a phone
width) are kept in ``test-artifacts/`` (``TESSERA_TEST_ARTIFACTS``) to look at.

Skipped only when no chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.support.paths import ISBI_SLICE, ROOT
from tests.support.server import serve
from training.bundle import DEFAULT_BUNDLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")]
#: Flags for a closed network: no background connections, no sandbox (the tests run as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("TESSERA_TEST_ARTIFACTS", ROOT / "test-artifacts"))
#: Seconds the page may take for one image with the shipped model (three requests, 2 busy cores).
PAGE_SECONDS = 180


@pytest.fixture(scope="module")
def shipped_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("ui-home")
    with serve(DEFAULT_BUNDLE, home, {"TESSERA_RESULTS_DIR": str(home / "results")}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def page_at(browser, url: str, width: int = 1280, height: int = 800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30_000)
    return page


def canvas_pixels(page, selector: str) -> np.ndarray:
    data_url = page.eval_on_selector(selector, "canvas => canvas.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_overlay_and_areas_equal_the_api(browser, shipped_url: str) -> None:
    page = page_at(browser, f"{shipped_url}/ui")
    page.set_input_files("#file-input", str(ISBI_SLICE))
    page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'", timeout=PAGE_SECONDS * 1000)
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
    shown = canvas_pixels(page, "#overlay-layer")
    with httpx.Client(base_url=shipped_url, timeout=PAGE_SECONDS) as client:
        files = {"image": ("25.png", ISBI_SLICE.read_bytes(), "image/png")}
        api = np.asarray(Image.open(io.BytesIO(client.post("/segment", params={"output": "overlay"}, files=files).content)))
        stats = client.post("/segment", params={"output": "json"}, files=files).json()
    assert shown.shape == api.shape == (512, 512, 3)
    np.testing.assert_array_equal(shown, api)
    rows = page.eval_on_selector_all("#areas tbody tr", "rows => rows.map(r => [Number(r.dataset.class), Number(r.dataset.pixels), Number(r.dataset.area)])")
    assert rows == [[c["class"], c["pixels"], c["area"]] for c in stats["classes"]]
    assert all(pixels > 0 for _, pixels, _ in rows)
    assert "membrane (tinted)" in page.inner_text("#areas")
    assert page.get_attribute("#download-mask", "href").startswith("blob:")
    with page.expect_download(timeout=PAGE_SECONDS * 1000) as download:
        page.click("#download-geojson")
    objects = json.loads(Path(download.value.path()).read_text())
    assert objects["type"] == "FeatureCollection" and objects["features"]
    assert {f["properties"]["class_name"] for f in objects["features"]} <= {"cell"}
    page.fill("#opacity", "40")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#overlay-layer", "c => c.style.opacity") == "0.4"
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select')].filter(e => e.labels.length === 0).map(e => e.id)")
    assert unlabelled == []
    assert shot(page, "ui-1280x800.png").stat().st_size > 10_000
    page.close()


def test_the_api_reference_links_to_the_page(browser, shipped_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{shipped_url}/")
    page.wait_for_selector("#swagger-ui .opblock", timeout=60_000)  # BentoML's Swagger UI, served locally
    shot(page, "api-reference.png")
    page.click("a[href='/ui']")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30_000)
    assert page.url.endswith("/ui")
    page.close()


def test_phone_width_has_no_horizontal_scroll(browser, shipped_url: str) -> None:
    page = page_at(browser, f"{shipped_url}/ui", width=390, height=844)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.is_visible("label[for=file-input]") and page.is_visible("#run")
    shot(page, "ui-phone-390.png")
    page.close()


def test_a_bad_file_shows_the_apis_error(browser, shipped_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels")
    with httpx.Client(base_url=shipped_url, timeout=60) as client:
        detail = client.post("/segment", files={"image": (bad.name, bad.read_bytes(), "image/png")}).json()["detail"]
    page = page_at(browser, f"{shipped_url}/ui")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert detail in page.inner_text("#error") and "unsupported" in page.inner_text("#error")
    shot(page, "ui-bad-file.png")
    page.close()


def test_a_big_image_goes_through_a_job(browser, shipped_url: str) -> None:
    page = page_at(browser, f"{shipped_url}/ui?job_pixels=1000")
    page.set_input_files("#file-input", str(ISBI_SLICE))
    page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'failed'", timeout=PAGE_SECONDS * 1000)
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")
    assert page.eval_on_selector("#job-progress", "p => p.value") == 1
    href = page.get_attribute("#job-download", "href")
    assert href.startswith("/jobs/") and href.endswith("/result") and page.is_visible("#job-download")
    assert "1 / 1 tiles" in page.inner_text("#job-numbers")
    shot(page, "ui-job.png")
    page.close()


def test_a_job_can_be_cancelled_from_the_page(browser, shipped_url: str, tmp_path: Path) -> None:
    """A TIFF (which the browser cannot show) of 4 tiles, sent as a job, cancelled after a tile."""
    slice_ = np.asarray(Image.open(ISBI_SLICE))
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.block([[slice_, slice_[:, ::-1]], [slice_[::-1], slice_[::-1, ::-1]]]), tile=(256, 256))
    page = page_at(browser, f"{shipped_url}/ui?job_bytes=1000")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("document.getElementById('job-progress').value >= 0.25 && document.getElementById('job-line').textContent.includes('segmenting')",
                           timeout=PAGE_SECONDS * 1000)
    shot(page, "ui-job-running.png")
    page.click("#job-cancel")
    page.wait_for_function("document.body.dataset.state === 'cancelled'", timeout=PAGE_SECONDS * 1000)
    assert "partial output was deleted" in page.inner_text("#status") and page.is_hidden("#job-download")
    page.close()
