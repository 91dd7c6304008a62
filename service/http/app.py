"""The HTTP prediction API: a BentoML 1.4 service, a thin layer over the one predictor.

Serve it with ``tessera serve`` (or ``bentoml serve service.http.app:Tessera``). The model bundle is
``$TESSERA_BUNDLE`` (default: the shipped model), loaded once per worker in ``__init__``, never at
import. Device ``auto``: CUDA when present (``resources={"gpu": 1}``), else the CPU with
``torch.set_num_threads`` set to this worker's share of the cores (BentoML's new-style services do
not, and workers would oversubscribe the CPU).

Routes (OpenAPI at ``/docs.json``, Swagger UI at ``/``):

* ``POST /segment`` -- an image as multipart file (part ``image``) or a raw body with its content
  type; returns the label PNG, or an overlay PNG, probabilities, or JSON (see :class:`Output`).
* ``GET /model`` -- the bundle's metadata.
* ``POST /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/result``, ``POST /jobs/{id}/cancel``,
  ``DELETE /jobs/{id}`` -- the same segmentation as a job for huge images: the upload spooled to
  disk, streamed through the tiler into a tiled BigTIFF of labels or a zipped zarr v3 store in the
  results folder, with progress and cancel (:mod:`service.http.job_routes`).
* ``GET /ui`` -- a page to segment an image in the browser; ``GET /`` -- the API reference with a
  link to it (:mod:`service.http.pages`).
* ``/livez``, ``/readyz`` (ready once the model is loaded), ``/metrics`` (Prometheus, with
  ``tessera_pixels_segmented_total``) -- from BentoML.

Every refused request gets a 4xx with a JSON body ``{"error": ..., "detail": ...}``. Request
bodies are capped by :class:`service.http.uploads.BodyLimit`. An image's EXIF/TIFF orientation is
applied before segmentation; the response's ``X-Tessera-Orientation`` header (and the JSON
output's ``orientation``) says which orientation tag the upload had (1: none).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import tifffile
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.http import job_routes, pages
from service.http.errors import JsonNotFound, http_error
from service.http.jobrunner import JobManager
from service.http.jobstore import JobSettings, JobStore
from service.http.responses import class_statistics, coco_objects, geojson_objects
from service.http.uploads import (
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    BodyLimit,
    Limits,
    UploadError,
    decode_upload,
    read_upload,
)
from training.bundle import DEFAULT_BUNDLE, BundleInfo, load_bundle
from training.device import set_cpu_threads
from training.errors import TesseraError
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.io.images import ImageError, image_orientation, match_channels
from training.io.overlay import foreground_classes, overlay
from training.io.writers import encode_png, encode_probabilities

#: Environment variables the service reads (documented in the README).
BUNDLE_ENV = "TESSERA_BUNDLE"
WORKERS_ENV = "TESSERA_WORKERS"
#: The server's inference options as JSON (``tessera serve --tile ... --tta ...``); requests
#: replace the tile, TTA and threshold with their query options.
OPTIONS_ENV = "TESSERA_OPTIONS"
#: Predictors kept per worker for distinct request options.
PREDICTOR_CACHE = 4

app = FastAPI(
    title="Tessera",
    version="0.1.0",
    description="U-Net image segmentation with exact, seam-free tiling of images of any size.",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)

app.include_router(pages.router)
app.include_router(job_routes.router)
app.add_exception_handler(StarletteHTTPException, http_error)

pixels_segmented = bentoml.metrics.Counter(
    name="tessera_pixels_segmented",
    documentation="Image pixels segmented by this server",
    labelnames=["endpoint"],
)


class Output(str, Enum):
    """What ``POST /segment`` returns."""

    mask = "mask"  # label PNG: class indices 0, 1, ... (uint8, 16-bit above 256 classes)
    overlay = "overlay"  # RGB PNG: the labels drawn over the image
    probabilities = "probabilities"  # per-class probabilities (see ProbabilityFormat)
    json = "json"  # per-class statistics, optionally objects (see Geometry)


class ProbabilityFormat(str, Enum):
    tiff = "tiff"  # (K, H, W) uint8 TIFF, round(255 p)
    npy = "npy"  # (K, H, W) uint8 NumPy array
    png = "png"  # one class (class_index) as a gray uint8 PNG


class Geometry(str, Enum):
    none = "none"
    geojson = "geojson"
    coco = "coco"


class TTA(str, Enum):
    none = "none"
    flips = "flips"
    d4 = "d4"


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


@app.exception_handler(RequestValidationError)
async def invalid_options(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
    return error_response(422, "invalid_option", problems)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def options_from_env() -> InferenceOptions:
    """The server's :class:`~training.inference.options.InferenceOptions` from ``TESSERA_OPTIONS``
    (all defaults when unset)."""
    text = os.environ.get(OPTIONS_ENV)
    return InferenceOptions(**json.loads(text)) if text else InferenceOptions()


def limits_from_env() -> Limits:
    """Upload limits from ``TESSERA_MAX_UPLOAD_BYTES`` and ``TESSERA_MAX_PIXELS`` (defaults otherwise)."""
    return Limits(max_bytes=env_int(MAX_BYTES_ENV, Limits.max_bytes), max_pixels=env_int(MAX_PIXELS_ENV, Limits.max_pixels))


@bentoml.service(
    name="tessera",
    resources={"gpu": 1},
    workers=env_int(WORKERS_ENV, 1),
    traffic={"timeout": 3600},
)
@bentoml.asgi_app(app, path="/")
class Tessera:
    """One worker: one loaded bundle and its predictors."""

    def __init__(self) -> None:
        workers = env_int(WORKERS_ENV, 1)
        set_cpu_threads(max(1, len(os.sched_getaffinity(0)) // workers))
        path = os.environ.get(BUNDLE_ENV) or str(DEFAULT_BUNDLE)
        self.bundle = load_bundle(path)
        self.limits = limits_from_env()
        self.options = options_from_env()
        self.predictors: dict[InferenceOptions, Predictor] = {}
        # Every inference runs on this one thread: one request at a time (the model uses every
        # core), and PyTorch's buffers stay in one malloc arena instead of one per pool thread.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-model")
        self.predictor(self.options)
        # Jobs run on their own thread with their own predictor (the model is shared), so a long
        # job leaves POST /segment answering; the results folder is their only state.
        store = JobStore(JobSettings.from_env())
        store.recover()
        self.jobs = JobManager(
            store, lambda asked: Predictor(self.bundle, self.options.replace(**asked)), self.limits, self.info.in_channels,
            on_pixels=lambda count: pixels_segmented.labels(endpoint="jobs").inc(count),
        )

    # ------------------------------------------------------------------ helpers
    @property
    def info(self) -> BundleInfo:
        return self.bundle.info

    def predictor(self, options: InferenceOptions) -> Predictor:
        """A predictor for these options, built once and kept (the model is shared)."""
        if options not in self.predictors:
            if len(self.predictors) >= PREDICTOR_CACHE:
                self.predictors.pop(next(iter(self.predictors)))
            self.predictors[options] = Predictor(self.bundle, options)
        return self.predictors[options]

    def request_options(self, tile: int | None, tta: TTA | None, threshold: float | None) -> InferenceOptions:
        """The server's options with the request's tile, TTA and threshold where it gives them."""
        asked = {"tile": tile, "tta": tta.value if tta is not None else None, "threshold": threshold}
        try:
            return self.options.replace(**{name: value for name, value in asked.items() if value is not None})
        except TesseraError as error:
            raise UploadError(422, "invalid_option", str(error)) from None

    def segment_pixels(self, pixels: np.ndarray, options: InferenceOptions, probabilities: bool, endpoint: str):
        """Run the predictor; called on :attr:`model_thread` only."""
        try:
            pixels = match_channels(pixels, self.info.in_channels)
            prediction = self.predictor(options).predict(pixels, probabilities=probabilities)
        except ImageError as error:
            raise UploadError(422, error.reason, str(error)) from None
        except TesseraError as error:  # an invalid tile size names the valid ones
            raise UploadError(422, "invalid_option", str(error)) from None
        pixels_segmented.labels(endpoint=endpoint).inc(pixels.shape[0] * pixels.shape[1])
        return pixels, prediction

    # ------------------------------------------------------------------ routes
    @app.post(
        "/segment",
        summary="Segment an image",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}, "application/json": {}, "image/tiff": {}, "application/octet-stream": {}}},
            400: {"description": "empty, truncated or malformed upload"},
            413: {"description": "body or pixel count over the limit"},
            415: {"description": "not an image type Tessera reads"},
            422: {"description": "invalid option, shape or channel count"},
        },
        openapi_extra=job_routes.UPLOAD_BODY,
    )
    async def segment(
        self,
        request: Request,
        output: Output = Output.mask,
        probability_format: ProbabilityFormat = ProbabilityFormat.tiff,
        class_index: Annotated[int | None, Query(ge=0, description="class shown by probability_format=png")] = None,
        geometry: Geometry = Geometry.none,
        threshold: Annotated[float | None, Query(ge=0, le=1, description="two-class models: class 1 where p1 >= threshold")] = None,
        tta: Annotated[TTA | None, Query(description="test-time augmentation (default: the server's, none)")] = None,
        tile: Annotated[int | None, Query(ge=1, le=8192, description="tile input size (a valid size for the model)")] = None,
        pixel_size: Annotated[float, Query(ge=1e-12, description="units per pixel, for areas in JSON")] = 1.0,
    ) -> Response:
        """Segment the uploaded image (multipart part ``image`` or a raw image body).

        Returns the label mask as PNG by default; ``output`` chooses overlay, probabilities or JSON.
        """
        unknown = set(request.query_params) - set(SEGMENT_OPTIONS)
        if unknown:
            return error_response(422, "invalid_option", f"unknown option(s): {', '.join(sorted(unknown))}")
        try:
            self.check_options(output, class_index, threshold)
            data = await read_upload(request)
            pixels = decode_upload(data, self.limits)
            orientation = image_orientation(data)
            options = self.request_options(tile, tta, threshold)
            pixels, prediction = await asyncio.get_running_loop().run_in_executor(
                self.model_thread, self.segment_pixels, pixels, options, output == Output.probabilities, "segment"
            )
        except UploadError as error:
            return error_response(error.status, error.error, error.detail)
        response = self.render(output, pixels, prediction.labels, prediction.probabilities, probability_format, class_index,
                               geometry, pixel_size, orientation)
        response.headers["X-Tessera-Orientation"] = str(orientation)
        return response

    @app.get("/model", summary="The served model's metadata")
    def model(self) -> dict:
        """Classes, architecture, tile geometry, normalisation, provenance and metrics of the bundle."""
        return {"bundle": Path(self.bundle.path).name, **self.info.to_dict()}

    # ------------------------------------------------------------------ checks and rendering
    def check_options(self, output: Output, class_index: int | None, threshold: float | None) -> None:
        classes = len(self.info.classes)
        if threshold is not None and classes != 2:
            raise UploadError(422, "invalid_option", f"threshold needs a two-class model; this one has {classes}")
        if class_index is not None and class_index >= classes:
            raise UploadError(422, "invalid_option", f"class_index {class_index}: the model has classes 0..{classes - 1}")

    def render(self, output, pixels, labels, probabilities, probability_format, class_index, geometry, pixel_size, orientation) -> Response:
        classes = self.info.classes
        if output == Output.mask:
            return Response(encode_png(labels), media_type="image/png")
        if output == Output.overlay:
            return Response(encode_png(overlay(pixels, labels, foreground_classes(self.info))), media_type="image/png")
        if output == Output.probabilities:
            quantised = encode_probabilities(probabilities, np.uint8)
            return probability_response(quantised, probability_format, class_index)
        body: dict = {
            "size": list(labels.shape),
            "orientation": orientation,
            "classes": class_statistics(labels, classes, pixel_size),
        }
        include = [k for k in range(len(classes)) if k != 0]
        if geometry == Geometry.geojson:
            body["objects"] = geojson_objects(labels, classes, include, pixel_size)
        elif geometry == Geometry.coco:
            body["objects"] = coco_objects(labels, classes, include)
        return Response(json.dumps(body), media_type="application/json")


Tessera.add_asgi_middleware(BodyLimit, max_bytes=limits_from_env().max_bytes)
Tessera.add_asgi_middleware(JsonNotFound)

#: Query options ``POST /segment`` accepts; anything else is refused with 422.
SEGMENT_OPTIONS = ("output", "probability_format", "class_index", "geometry", "threshold", "tta", "tile", "pixel_size")


def probability_response(quantised: np.ndarray, fmt: ProbabilityFormat, class_index: int | None) -> Response:
    """(K, H, W) uint8 probabilities as TIFF, .npy, or one class as a gray PNG."""
    if fmt == ProbabilityFormat.png:
        index = class_index if class_index is not None else quantised.shape[0] - 1
        return Response(encode_png(quantised[index]), media_type="image/png")
    buffer = io.BytesIO()
    if fmt == ProbabilityFormat.npy:
        np.save(buffer, quantised, allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/octet-stream")
    tifffile.imwrite(buffer, quantised, photometric="minisblack")
    return Response(buffer.getvalue(), media_type="image/tiff")
