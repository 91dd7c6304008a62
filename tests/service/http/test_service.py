"""The HTTP service against a real ``bentoml serve`` on 127.0.0.1 (one server for the session).

Every endpoint is exercised over HTTP and compared with the in-process predictor; each kind of bad
upload from the issue has its own test, and the last test checks the server still serves.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import zarr
import zarr.storage
from PIL import Image
from scipy import ndimage

from service.cli import main as tessera
from tests.support.paths import ISBI_SLICE
from tests.support.server import SMALL_THRESHOLD, TEST_MAX_UPLOAD_BYTES
from training.inference.predictor import Predictor
from training.io.images import decode_image, read_image
from training.io.overlay import foreground_classes, overlay
from training.io.writers import encode_png, encode_probabilities

MAX_UPLOAD_BYTES = TEST_MAX_UPLOAD_BYTES
RNG = np.random.default_rng(7)
#: A small gray image (not a multiple of anything) used where the content does not matter.
SMALL = RNG.integers(0, 256, (61, 83), dtype=np.uint8)


@pytest.fixture(scope="session")
def bundle(service_bundle: Path) -> Path:
    return service_bundle


@pytest.fixture(scope="session")
def server(service_url: str):
    with httpx.Client(base_url=service_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def predictor(bundle: Path) -> Predictor:
    return Predictor(bundle, device="cpu")


@pytest.fixture(scope="session")
def isbi() -> np.ndarray:
    return read_image(ISBI_SLICE)


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def tiff(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def segment(client: httpx.Client, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return client.post("/segment", content=data, headers={"content-type": content_type}, params=params)


def labels_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return decode_image(response.content)


def assert_refused(response: httpx.Response, status: int, error: str, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert words in body["detail"]


# ---------------------------------------------------------------------------- health and metadata
def test_health(server: httpx.Client) -> None:
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200


def test_model_metadata(server: httpx.Client, predictor: Predictor) -> None:
    body = server.get("/model").json()
    assert body["bundle"] == "small.safetensors"
    assert body["classes"] == ["background", "foreground"]
    assert body["spec"] == predictor.info.spec
    assert body["in_channels"] == 1
    assert body["tile"] == predictor.info.tile


def test_openapi_documents_routes(server: httpx.Client) -> None:
    paths = server.get("/docs.json").json()["paths"]
    for route in ("/segment", "/model", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/cancel"):
        assert route in paths


# ---------------------------------------------------------------------------- POST /segment
def test_mask_equals_tessera_predict_byte_for_byte(server: httpx.Client, bundle: Path, isbi, predictor, tmp_path) -> None:
    response = server.post("/segment", files={"image": ("25.png", ISBI_SLICE.read_bytes(), "image/png")})
    expected = predictor.predict(isbi).labels
    assert set(np.unique(expected)) == {0, 1}
    assert response.content == encode_png(expected)
    out = tmp_path / "mask.png"
    assert tessera(["predict", str(bundle), str(ISBI_SLICE), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(read_image(out), labels_of(response))


def test_raw_body_equals_multipart(server: httpx.Client, predictor: Predictor) -> None:
    raw = segment(server, png(SMALL))
    multipart = server.post("/segment", files={"upload": ("x.png", png(SMALL), "image/png")})
    assert raw.content == multipart.content == encode_png(predictor.predict(SMALL).labels)


def test_overlay(server: httpx.Client, predictor: Predictor) -> None:
    response = segment(server, png(SMALL), output="overlay")
    assert response.status_code == 200
    assert response.content == encode_png(overlay(SMALL, predictor.predict(SMALL).labels, foreground_classes(predictor.info)))


@pytest.mark.parametrize("fmt", ["tiff", "npy", "png"])
def test_probabilities(server: httpx.Client, predictor: Predictor, fmt: str) -> None:
    response = segment(server, png(SMALL), output="probabilities", probability_format=fmt)
    assert response.status_code == 200, response.text
    expected = encode_probabilities(predictor.predict(SMALL, probabilities=True).probabilities, np.uint8)
    if fmt == "tiff":
        got = tifffile.imread(io.BytesIO(response.content))
    elif fmt == "npy":
        got = np.load(io.BytesIO(response.content), allow_pickle=False)
    else:
        got, expected = decode_image(response.content), expected[1]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_json_statistics_and_geojson(server: httpx.Client, predictor: Predictor) -> None:
    labels = predictor.predict(SMALL).labels
    body = segment(server, png(SMALL), output="json", geometry="geojson", pixel_size=0.5).json()
    counts = np.bincount(labels.ravel(), minlength=2)
    assert body["size"] == [61, 83]
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["area"] for c in body["classes"]] == (counts * 0.25).tolist()
    features = body["objects"]["features"]
    assert body["objects"]["type"] == "FeatureCollection"
    components, count = ndimage.label(labels == 1)
    assert len(features) == count > 1
    sizes = sorted(np.bincount(components.ravel())[1:] * 0.25)
    assert sorted(f["properties"]["area"] for f in features) == sizes
    for feature in features:
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4


def rle_decode(rle: dict) -> np.ndarray:
    """An uncompressed COCO RLE (column-major runs, zeros first) back to a mask."""
    height, width = rle["size"]
    values = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"]).astype(bool)
    return values.reshape(width, height).T


def test_json_coco_rle_decodes_to_the_mask(server: httpx.Client, predictor: Predictor) -> None:
    labels = predictor.predict(SMALL).labels
    objects = segment(server, png(SMALL), output="json", geometry="coco").json()["objects"]
    union = np.zeros(labels.shape, bool)
    for item in objects:
        mask = rle_decode(item["segmentation"])
        assert item["area"] == mask.sum()
        assert not (union & mask).any()
        union |= mask
    np.testing.assert_array_equal(union, labels == 1)


def test_the_bundles_threshold_decides_the_default_mask(server: httpx.Client, predictor: Predictor) -> None:
    probabilities = predictor.predict(SMALL, probabilities=True).probabilities
    got = labels_of(segment(server, png(SMALL)))
    np.testing.assert_array_equal(got, (probabilities[1] >= SMALL_THRESHOLD).astype(np.uint8))
    argmax = probabilities.argmax(0)
    assert (got != argmax).mean() > 0.1
    assert server.get("/model").json()["threshold"] == SMALL_THRESHOLD


def test_threshold(server: httpx.Client, predictor: Predictor) -> None:
    probabilities = predictor.predict(SMALL, probabilities=True).probabilities
    threshold = round(float(np.quantile(probabilities[1], 0.75)), 6)
    got = labels_of(segment(server, png(SMALL), threshold=threshold))
    np.testing.assert_array_equal(got, (probabilities[1] >= threshold).astype(np.uint8))
    assert 0 < got.sum() < (predictor.predict(SMALL).labels == 1).sum()


def test_tta(server: httpx.Client, bundle: Path) -> None:
    expected = Predictor(bundle, device="cpu", tta="flips").predict(SMALL).labels
    np.testing.assert_array_equal(labels_of(segment(server, png(SMALL), tta="flips")), expected)


def test_tile_size_does_not_change_the_mask(server: httpx.Client, predictor: Predictor) -> None:
    image = RNG.integers(0, 256, (150, 170), dtype=np.uint8)
    tile = predictor.info.geometry.valid_inputs_near(124)[0]  # 2 x 2 tiles over this image
    assert tile < predictor.info.tile["input"]
    np.testing.assert_array_equal(labels_of(segment(server, png(image), tile=tile)), predictor.predict(image).labels)


def test_invalid_tile_names_valid_sizes(server: httpx.Client) -> None:
    assert_refused(segment(server, png(SMALL), tile=61), 422, "invalid_option", "61")


def test_pixel_counter(server: httpx.Client) -> None:
    def counted() -> float:
        for line in server.get("/metrics").text.splitlines():
            if line.startswith('tessera_pixels_segmented_total{endpoint="segment"}'):
                return float(line.split()[-1])
        return 0.0

    before = counted()
    assert segment(server, png(SMALL)).status_code == 200
    assert counted() - before == SMALL.size


def run_job(client: httpx.Client, upload: tuple[str, bytes, str], **params: str) -> httpx.Response:
    """Submit / poll / get a job; a refused submit is returned as it is."""
    submitted = client.post("/jobs", files={"image": upload}, params=params)
    if submitted.status_code != 202:
        return submitted
    job_id = submitted.json()["job_id"]
    assert submitted.headers["location"] == f"/jobs/{job_id}"
    deadline = time.monotonic() + 120
    while (status := client.get(f"/jobs/{job_id}").json()["status"]) in ("in_progress", "pending"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    result = client.get(f"/jobs/{job_id}/result")
    assert (status == "completed") == (result.status_code == 200), (status, result.text)
    return result


def predicted_file(bundle: Path, image: Path, output: Path) -> Path:
    """``tessera predict`` in this process: the reference a job's file must equal."""
    assert tessera(["predict", str(bundle), str(image), "-o", str(output), "--device", "cpu", "--quiet"]) == 0
    return output


@pytest.fixture(scope="session")
def job_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled TIFF of several tiles for the small model (read lazily by the job)."""
    pixels = np.asarray(Image.open(ISBI_SLICE).resize((700, 530)))
    path = tmp_path_factory.mktemp("job") / "big.tif"
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib")
    return path


def test_async_job_zarr_equals_tessera_predict(server: httpx.Client, bundle: Path, job_image: Path, predictor, tmp_path) -> None:
    assert len(predictor.grid(530, 700)) >= 4
    result = run_job(server, ("big.tif", job_image.read_bytes(), "image/tiff"), format="zarr")
    assert result.headers["content-type"] == "application/zip"
    assert 'filename="labels.zarr.zip"' in result.headers["content-disposition"]
    archive = tmp_path / "labels.zarr.zip"
    archive.write_bytes(result.content)
    got = zarr.open(zarr.storage.ZipStore(archive, mode="r"), mode="r")
    expected = zarr.open(str(predicted_file(bundle, job_image, tmp_path / "expected.zarr")), mode="r")
    assert got.shape == (530, 700) and got.chunks == expected.chunks
    np.testing.assert_array_equal(got[:], expected[:])
    assert set(np.unique(got[:])) == {0, 1}
    assert got.attrs["classes"] == ["background", "foreground"]


@pytest.mark.parametrize("upload", ["tiff", "png"])
def test_async_job_tiff_equals_tessera_predict(server: httpx.Client, bundle: Path, job_image: Path, upload: str, tmp_path) -> None:
    image = job_image
    if upload == "png":  # decoded in memory instead of read lazily: the same labels
        image = tmp_path / "big.png"
        image.write_bytes(png(tifffile.imread(job_image)))
    result = run_job(server, (image.name, image.read_bytes(), f"image/{upload}"))
    assert result.headers["content-type"] == "image/tiff"
    expected = tifffile.imread(predicted_file(bundle, image, tmp_path / "expected.tif"))
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(result.content)), expected)


def test_async_job_file_name_does_not_choose_the_reader(server: httpx.Client, predictor: Predictor) -> None:
    image = RNG.integers(0, 256, (130, 97), dtype=np.uint8)
    result = run_job(server, ("lies.tif", png(image), "image/tiff"))
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(result.content)), predictor.predict(image).labels)


def test_async_job_takes_the_requests_tta_and_threshold(server: httpx.Client, bundle: Path) -> None:
    """A job's tta= and threshold= are applied as POST /segment applies them (and reported)."""
    image = RNG.integers(0, 256, (130, 97), dtype=np.uint8)
    result = run_job(server, ("x.png", png(image), "image/png"), tta="flips", threshold="0.3")
    expected = Predictor(bundle, device="cpu", tta="flips", threshold=0.3).predict(image).labels
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(result.content)), expected)
    assert not np.array_equal(expected, Predictor(bundle, device="cpu").predict(image).labels)
    job = server.post("/jobs", files={"image": ("x.png", png(image), "image/png")}, params={"threshold": "2"})
    assert job.status_code == 422, job.text


def test_async_job_bad_image(server: httpx.Client) -> None:
    response = server.post("/jobs", files={"image": ("empty.png", b"", "image/png")})
    assert response.status_code == 400, response.text
    assert "empty" in response.text and "/tmp" not in response.text


def test_async_job_wrong_channels(server: httpx.Client) -> None:
    colour = tiff(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8), photometric="rgb")
    response = server.post("/jobs", files={"image": ("rgb.tif", colour, "image/tiff")})
    assert response.status_code == 422, response.text
    assert "3 channel(s)" in response.text


def test_async_job_bad_format(server: httpx.Client) -> None:
    """Refused at submit, before the body is stored (the schema's enum)."""
    response = server.post("/jobs", files={"image": ("x.png", png(SMALL), "image/png")}, params={"format": "jpeg"})
    assert response.status_code == 422, response.text
    assert "format" in response.text


def test_async_job_over_limit_body(server: httpx.Client) -> None:
    """Refused before the body is read, naming the variable that raises the limit."""
    upload = ("big.tif", b"\0" * (MAX_UPLOAD_BYTES + 1), "image/tiff")
    assert_refused(server.post("/jobs", files={"image": upload}), 413, "too_large", "TESSERA_MAX_UPLOAD_BYTES raises it")


def test_chunked_over_limit_body(server: httpx.Client) -> None:
    """A body without Content-Length is counted as it streams and refused once past the limit."""

    def chunks():
        for _ in range(MAX_UPLOAD_BYTES // 2**16 + 2):
            yield b"\0" * 2**16

    response = server.post("/segment", content=chunks(), headers={"content-type": "image/png"})
    assert_refused(response, 413, "too_large", "over the limit")


# ---------------------------------------------------------------------------- bad input: one test each
def test_empty_body(server: httpx.Client) -> None:
    assert_refused(segment(server, b""), 400, "empty", "no bytes")


def test_non_image_bytes(server: httpx.Client) -> None:
    assert_refused(segment(server, b"this is not an image\n" * 20), 415, "unsupported", "not an image")


def test_truncated_png(server: httpx.Client) -> None:
    assert_refused(segment(server, png(SMALL)[:300]), 400, "corrupt", "truncated")


def test_truncated_jpeg(server: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(SMALL).save(buffer, "JPEG")
    assert_refused(segment(server, buffer.getvalue()[:300], "image/jpeg"), 400, "corrupt", "")


def test_zero_by_zero_image(server: httpx.Client) -> None:
    response = segment(server, png_header(0, 0))
    assert response.status_code == 422
    assert response.json()["error"] == "shape" and "no pixels" in response.json()["detail"]


def test_one_by_one_image(server: httpx.Client, predictor: Predictor) -> None:
    pixel = np.array([[200]], np.uint8)
    assert labels_of(segment(server, png(pixel))).shape == (1, 1)
    assert segment(server, png(pixel)).content == encode_png(predictor.predict(pixel).labels)


def test_decompression_bomb_header(server: httpx.Client) -> None:
    started = time.monotonic()
    assert_refused(segment(server, png_header(100_000, 100_000)), 413, "too_large", "100000x100000")
    assert time.monotonic() - started < 10
    assert "TESSERA_MAX_PIXELS raises it" in segment(server, png_header(100_000, 100_000)).json()["detail"]
    job = server.post("/jobs", files={"image": ("bomb.png", png_header(100_000, 100_000), "image/png")})
    assert_refused(job, 413, "too_large", "TESSERA_MAX_PIXELS raises it")


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_exif_orientation_is_applied_and_reported(server: httpx.Client, predictor: Predictor, isbi, orientation: int) -> None:
    """A phone photo's mask lies on the grid a viewer shows: the picture turned by hand."""
    picture = np.ascontiguousarray(isbi[:200, :300])
    stored = {1: picture, 6: np.rot90(picture, 1), 8: np.rot90(picture, -1)}[orientation]
    data = tiff(np.ascontiguousarray(stored), extratags=[(274, "H", 1, orientation, False)])
    response = segment(server, data, "image/tiff")
    assert response.headers["x-tessera-orientation"] == str(orientation)
    np.testing.assert_array_equal(labels_of(response), predictor.predict(picture).labels)
    assert segment(server, data, "image/tiff", output="json").json()["orientation"] == orientation


def test_cmyk_jpeg(server: httpx.Client) -> None:
    cmyk = np.stack([np.zeros_like(SMALL)] * 3 + [SMALL], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buffer, "JPEG", quality=100)
    assert labels_of(segment(server, buffer.getvalue(), "image/jpeg")).shape == SMALL.shape


def test_palette_png(server: httpx.Client, predictor: Predictor) -> None:
    palette = Image.fromarray(SMALL).convert("P")
    gray = np.asarray(palette.convert("L"))
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    np.testing.assert_array_equal(labels_of(segment(server, buffer.getvalue())), predictor.predict(gray).labels)


def test_alpha_png(server: httpx.Client, predictor: Predictor) -> None:
    with_alpha = np.stack([SMALL, np.full_like(SMALL, 128)], axis=-1)
    np.testing.assert_array_equal(labels_of(segment(server, png(with_alpha, "LA"))), predictor.predict(SMALL).labels)


def test_16_bit_png(server: httpx.Client, predictor: Predictor) -> None:
    deep = SMALL.astype(np.uint16) * 257
    np.testing.assert_array_equal(labels_of(segment(server, png(deep))), predictor.predict(deep).labels)


def test_float32_tiff(server: httpx.Client, predictor: Predictor) -> None:
    floats = SMALL.astype(np.float32) / 255
    np.testing.assert_array_equal(labels_of(segment(server, tiff(floats), "image/tiff")), predictor.predict(floats).labels)


def test_multi_page_tiff(server: httpx.Client) -> None:
    assert_refused(segment(server, tiff(np.stack([SMALL, SMALL])), "image/tiff"), 422, "shape", "multi-page")


def test_wrong_channel_count(server: httpx.Client) -> None:
    colour = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert_refused(segment(server, png(colour)), 422, "channels", "3 channel(s), the model takes 1")


def test_two_channel_tiff(server: httpx.Client) -> None:
    two = tiff(np.stack([SMALL, SMALL], -1), photometric="minisblack", planarconfig="contig")
    assert_refused(segment(server, two, "image/tiff"), 422, "channels", "2 channel(s)")


def test_wrong_content_type(server: httpx.Client) -> None:
    assert_refused(segment(server, png(SMALL), "text/plain"), 415, "unsupported_media_type", "text/plain")


def test_multipart_without_file(server: httpx.Client) -> None:
    assert_refused(server.post("/segment", data={"note": "x"}, files={}), 415, "unsupported_media_type", "")


def test_over_limit_body(server: httpx.Client) -> None:
    assert_refused(segment(server, b"\0" * (MAX_UPLOAD_BYTES + 1)), 413, "too_large", "over the limit")


def test_unknown_option(server: httpx.Client) -> None:
    assert_refused(segment(server, png(SMALL), colour="red"), 422, "invalid_option", "colour")


@pytest.mark.parametrize(
    ("params", "words"),
    [({"output": "jpeg"}, "output"), ({"threshold": "2"}, "threshold"), ({"tile": "-3"}, "tile"), ({"class_index": "5"}, "class_index")],
)
def test_invalid_option_value(server: httpx.Client, params: dict, words: str) -> None:
    assert_refused(segment(server, png(SMALL), **params), 422, "invalid_option", words)


def test_still_serving_after_bad_input(server: httpx.Client, predictor: Predictor, isbi) -> None:
    """Runs last in this module: after every refused request the server answers correctly."""
    assert server.get("/readyz").status_code == 200
    assert segment(server, ISBI_SLICE.read_bytes()).content == encode_png(predictor.predict(isbi).labels)
    assert json.loads(server.get("/model").content)["classes"] == ["background", "foreground"]
