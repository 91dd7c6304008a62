"""Pages for people, served by the service itself (no CDN, works offline).

* ``GET /`` -- BentoML's API reference (Swagger UI) with a link to the page above it.
* ``GET /ui`` -- the segmentation page: plain HTML, CSS and JavaScript from ``static/`` in this
  package (no build step); it talks to the service's own routes (``/segment``, ``/jobs``).
* ``GET /ui/config.json`` -- what the page needs to know of the model: classes, the overlay's
  palette and foreground classes (from :mod:`training.io.overlay`, the one drawing of overlays),
  the bundle's threshold, and the sizes above which the page sends an image as a job.

None of these routes is in the OpenAPI document: they are not part of the API.
"""

from __future__ import annotations

import re
from pathlib import Path

import bentoml
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from training.io.overlay import PALETTE, foreground_classes

STATIC = Path(__file__).parent / "static"
#: The files the page is made of, by URL name, with their media types.
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
#: The page sends an image as a job above these sizes (bytes of the file, decoded pixels).
JOB_BYTES = 32 * 2**20
JOB_PIXELS = 4096 * 4096
#: Where BentoML keeps its Swagger page.
BENTOML_INDEX = Path(bentoml.__file__).parent.parent / "_bentoml_impl" / "server" / "main-openapi.html"
BANNER = (
    '<p style="margin:0;padding:0.6rem 1rem;background:#0b63c5;color:#fff;font:16px system-ui,sans-serif">'
    'Tessera segmentation service. <a href="/ui" style="color:#fff;font-weight:bold">Open the page to segment '
    'an image</a> or use the API below.</p>'
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> HTMLResponse:
    """BentoML's Swagger UI, its tracking snippets left out, with a link to ``/ui`` on top."""
    page = BENTOML_INDEX.read_text()
    page = re.sub(r"<!-- Google Tag Manager.*?End Google Tag Manager[^>]*-->", "", page, flags=re.DOTALL)
    page = page.replace("<body>", f"<body>{BANNER}", 1)
    return HTMLResponse(page)


@router.get("/ui")
def ui() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/ui/config.json")
def ui_config() -> JSONResponse:
    service = bentoml.get_current_service()
    info = service.bundle.info
    return JSONResponse({
        "bundle": Path(service.bundle.path).name if service.bundle.path else "model",
        "classes": info.classes,
        "threshold": info.threshold,
        "foreground": foreground_classes(info),
        "palette": PALETTE.tolist(),
        "job_bytes": JOB_BYTES,
        "job_pixels": JOB_PIXELS,
    })


@router.get("/ui/{asset}")
def ui_asset(asset: str) -> Response:
    if asset not in ASSETS:
        return JSONResponse({"error": "not_found", "detail": f"no page file {asset!r}"}, status_code=404)
    return FileResponse(STATIC / asset, media_type=ASSETS[asset], headers={"cache-control": "no-cache"})
