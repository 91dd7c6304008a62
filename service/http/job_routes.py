"""The job routes: ``/jobs`` on the service's own FastAPI app (see :mod:`service.http.jobstore`).

* ``POST /jobs?format=tiff|zarr`` -- the image as multipart part ``image`` or a raw image body,
  written to disk as it arrives; 202 with the job's status and ``Location``; 429 with
  ``Retry-After`` when ``TESSERA_MAX_JOBS`` jobs are queued or running. ``POST
  /jobs?path=REL`` (no body) segments the whole-slide image ``REL`` under ``TESSERA_DATA_ROOT``
  instead (:mod:`service.http.data_root`).
  ``tta=none|flips|d4`` and ``threshold=P`` as ``POST /segment`` takes them (default: the server's).
* ``GET /jobs/{job_id}`` -- status, stage, tiles done / total, pixels per second, ETA.
* ``GET /jobs/{job_id}/result`` -- the label file, streamed from disk (409 until completed; a
  failed job answers its error with the status ``POST /segment`` gives the same problem).
* ``POST /jobs/{job_id}/cancel`` -- stop it after the current tile batch, delete partial output.
* ``DELETE /jobs/{job_id}`` -- cancel if active, then delete the job and its result (204).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import bentoml
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.http.data_root import data_root, resolve_data_path
from service.http.jobrunner import JobManager, QueueFull
from service.http.jobs import JobFormat
from service.http.jobstore import JobStage, JobStatus
from service.http.spool import spool_upload
from service.http.uploads import IMAGE_TYPES, UploadError

router = APIRouter(tags=["jobs"])


class JobTTA(str, Enum):
    """Test-time augmentation of a job (as ``POST /segment?tta=`` takes it)."""

    none = "none"
    flips = "flips"
    d4 = "d4"


class ErrorBody(BaseModel):
    """Every refusal: a short error name and a sentence."""

    error: str
    detail: str


class JobError(BaseModel):
    status: int
    error: str
    detail: str


class JobStatusBody(BaseModel):
    """A job's status (times in Unix seconds, ``size`` is ``[height, width]``)."""

    job_id: str
    format: JobFormat
    status: JobStatus
    stage: JobStage
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    size: list[int] | None
    orientation: int
    upload_bytes: int
    tiles_done: int
    tiles_total: int | None
    progress: float
    pixels_per_second: float | None
    eta_seconds: float | None
    error: JobError | None
    result_url: str | None
    filename: str | None
    options: dict[str, Any]


def job_manager() -> JobManager:
    """The serving worker's :class:`JobManager`."""
    return bentoml.get_current_service().jobs


#: The job manager, injected into every job route.
Jobs = Annotated[JobManager, Depends(job_manager)]


def refuse(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def status_body(jobs: JobManager, record) -> dict:
    return record.public(jobs.store.settings.retention_s)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {400: "malformed or empty upload", 404: "no such job (or expired)", 409: "the job has no result (yet)",
             413: "body or pixel count over the limit (the detail names the variable that raises it)",
             415: "not an image type Tessera reads", 422: "invalid option, shape or channel count"}
    return {code: {"model": ErrorBody, "description": words[code]} for code in codes}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}}},
            },
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_TYPES},
        },
    }
}


@router.post(
    "/jobs",
    status_code=202,
    summary="Submit a segmentation job for a huge image",
    response_model=JobStatusBody,
    openapi_extra=UPLOAD_BODY,
    responses={
        **error_responses(400, 404, 413, 415, 422),
        429: {"model": ErrorBody, "description": "the job queue is full",
              "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    },
)
async def submit(
    request: Request,
    jobs: Jobs,
    format: JobFormat = JobFormat.tiff,
    path: str | None = None,
    tta: JobTTA | None = None,
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
) -> Response:
    """Queue the uploaded image (or the slide ``path`` names under ``TESSERA_DATA_ROOT``); poll
    ``GET /jobs/{job_id}``, then download ``GET /jobs/{job_id}/result``."""
    unknown = set(request.query_params) - {"format", "path", "tta", "threshold"}
    if unknown:
        return refuse(422, "invalid_option", f"unknown option(s): {', '.join(sorted(unknown))}")
    try:
        slide = resolve_data_path(path, data_root()) if path is not None else None
        asked = {"tta": tta.value if tta is not None else None, "threshold": threshold}
        record = await run_in_threadpool(jobs.reserve, format, {k: v for k, v in asked.items() if v is not None})
    except UploadError as error:
        return refuse(error.status, error.error, error.detail)
    except QueueFull as full:
        return refuse(429, "queue_full", str(full), {"Retry-After": str(full.retry_after)})
    try:
        if slide is not None:
            record = await run_in_threadpool(jobs.accept_slide, record, slide)
        else:
            size, _fields = await spool_upload(request, jobs.upload_path(record))
            record = await run_in_threadpool(jobs.accept, record, size)
    except UploadError as error:
        jobs.store.delete(record.job_id)
        return refuse(error.status, error.error, error.detail)
    except BaseException:
        jobs.store.delete(record.job_id)
        raise
    return JSONResponse(status_body(jobs, record), status_code=202, headers={"Location": f"/jobs/{record.job_id}"})


@router.get("/jobs/{job_id}", summary="A job's status and progress", response_model=JobStatusBody, responses=error_responses(404))
def status(job_id: str, jobs: Jobs) -> Response:
    try:
        return JSONResponse(status_body(jobs, jobs.store.load(job_id)))
    except KeyError:
        return refuse(404, "not_found", f"no job {job_id!r} (never submitted, deleted or expired)")


@router.get(
    "/jobs/{job_id}/result",
    summary="Download a completed job's label file",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/tiff": {"schema": {"type": "string", "format": "binary"}},
                          "application/zip": {"schema": {"type": "string", "format": "binary"}}},
              "description": "tiled BigTIFF of class indices, or a zipped zarr v3 store"},
        **error_responses(400, 404, 409, 413, 415, 422),
    },
)
def result(job_id: str, jobs: Jobs) -> Response:
    """The result file, streamed from disk; a failed job answers its error."""
    try:
        record = jobs.store.load(job_id)
    except KeyError:
        return refuse(404, "not_found", f"no job {job_id!r} (never submitted, deleted or expired)")
    if record.status == JobStatus.completed.value and record.result:
        path = jobs.store.folder(job_id) / record.result["file"]
        return FileResponse(path, media_type=record.result["media_type"], filename=record.result["filename"])
    if record.status == JobStatus.failed.value and record.error and record.error["status"] < 500:
        return refuse(record.error["status"], record.error["error"], record.error["detail"])
    return refuse(409, "not_ready", f"job {job_id} is {record.status}; it has no result")


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job", response_model=JobStatusBody, responses=error_responses(404))
def cancel(job_id: str, jobs: Jobs) -> Response:
    """Stop the job after its current tile batch and delete its partial output (a finished job is left as it is)."""
    try:
        return JSONResponse(status_body(jobs, jobs.store.request_cancel(job_id)))
    except KeyError:
        return refuse(404, "not_found", f"no job {job_id!r} (never submitted, deleted or expired)")


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel and delete a job", response_class=Response, responses=error_responses(404))
def delete(job_id: str, jobs: Jobs) -> Response:
    """Cancel the job if it is queued or running, then delete it and its result."""
    try:
        jobs.delete(job_id)
    except KeyError:
        return refuse(404, "not_found", f"no job {job_id!r} (never submitted, deleted or expired)")
    return Response(status_code=204)
