"""Segmentation jobs for huge images: files in a results folder, a bounded queue, progress, cancel.

Every job is a folder ``<results>/<job_id>/`` holding ``job.json`` (its record, rewritten
atomically), the spooled upload while it waits or runs, and its result file once completed.
Nothing of a job is held in memory beyond its record: uploads are written to disk as they arrive
(:mod:`service.http.spool`), results are streamed to the client from the file, and the folder is
the only state, so every worker of a server (``TESSERA_WORKERS``) reads the same jobs.

* Queue: at most ``TESSERA_MAX_JOBS`` jobs pending or running in the folder; a submit past that
  is refused with 429 and a ``Retry-After`` estimated from the running jobs' ETAs. Each worker
  runs its own jobs one at a time on one job thread, beside the thread that answers
  ``POST /segment``.
* Progress: the tiler reports tiles done after every tile batch; the record then carries tiles
  done / total, pixels per second, the ETA and the stage (``queued``, ``reading`` -- opening the
  image and its normalisation statistics --, ``segmenting``, ``writing``, ``done``).
* Cancel: a ``cancel`` file in the job's folder, checked after every tile batch; the tiler stops
  there, the sink deletes its partial file and the job's upload and work files are removed.
* Retention: a finished job (completed, failed, cancelled) and its files are deleted
  ``TESSERA_JOB_RETENTION`` seconds after it finished (swept at start-up and on every submit).
* Restart: at start-up a job whose record says pending or in progress but whose owning process
  (pid and start time) is gone is marked failed (``server_restarted``) and its partial files are
  removed; completed results stay until their retention ends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import psutil

#: Environment variables of the job system (documented in the README and docs/http-api.md).
RESULTS_DIR_ENV = "TESSERA_RESULTS_DIR"
RETENTION_ENV = "TESSERA_JOB_RETENTION"
MAX_JOBS_ENV = "TESSERA_MAX_JOBS"
#: Defaults: one day of retention, four jobs pending or running.
DEFAULT_RETENTION_S = 24 * 3600
DEFAULT_MAX_JOBS = 4
#: Seconds between two progress writes of a record (the tiler may report many batches a second).
PROGRESS_INTERVAL_S = 0.25
#: Retry-After when no running job has an ETA yet.
DEFAULT_RETRY_AFTER_S = 30
RECORD = "job.json"
CANCEL = "cancel"
#: Marker of a job deleted while it runs: it answers 404 at once, its thread removes the folder.
DELETED = "deleted"


class JobStatus(str, Enum):
    """Where a job is: the first two are active, the last three finished."""

    pending = "pending"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class JobStage(str, Enum):
    """What a job is doing."""

    queued = "queued"
    reading = "reading"
    segmenting = "segmenting"
    writing = "writing"
    done = "done"


ACTIVE = (JobStatus.pending.value, JobStatus.in_progress.value)


class JobCancelled(Exception):
    """Raised from the progress callback when a job's cancel file appears."""


@dataclass
class JobSettings:
    """The results folder, how long finished jobs are kept (s) and how many may be active."""

    root: Path
    retention_s: float = DEFAULT_RETENTION_S
    max_jobs: int = DEFAULT_MAX_JOBS

    @classmethod
    def from_env(cls) -> JobSettings:
        """From ``TESSERA_RESULTS_DIR`` (default: ``tessera-results`` in the temporary folder),
        ``TESSERA_JOB_RETENTION`` (seconds) and ``TESSERA_MAX_JOBS``."""
        root = os.environ.get(RESULTS_DIR_ENV) or str(Path(os.environ.get("TMPDIR", "/tmp")) / "tessera-results")
        retention = float(os.environ.get(RETENTION_ENV) or DEFAULT_RETENTION_S)
        max_jobs = int(os.environ.get(MAX_JOBS_ENV) or DEFAULT_MAX_JOBS)
        if retention <= 0 or max_jobs < 1:
            raise ValueError(f"{RETENTION_ENV} must be > 0 and {MAX_JOBS_ENV} >= 1")
        return cls(Path(root), retention, max_jobs)


def process_identity(pid: int | None = None) -> tuple[int, float]:
    """(pid, start time) of a process: a pid alone may be reused after a restart."""
    process = psutil.Process(pid)
    return process.pid, round(process.create_time(), 3)


def process_alive(owner: list | None) -> bool:
    """Whether the process recorded as ``[pid, start time]`` still runs."""
    if not owner:
        return False
    try:
        return process_identity(int(owner[0]))[1] == owner[1]
    except psutil.Error:
        return False


@dataclass
class JobRecord:
    """One job's record (``job.json``); times are Unix seconds, sizes ``[height, width]``."""

    job_id: str
    format: str
    status: str = JobStatus.pending.value
    stage: str = JobStage.queued.value
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    #: Time and tiles done at the first tile batch's report: the rate is measured from there.
    segmenting_since: float | None = None
    tiles_at_start: int = 0
    finished_at: float | None = None
    size: list[int] | None = None
    orientation: int = 1
    tiles_done: int = 0
    tiles_total: int | None = None
    error: dict | None = None
    result: dict | None = None
    owner: list | None = None
    upload_bytes: int = 0
    #: A whole-slide image under TESSERA_DATA_ROOT segmented in place of an upload.
    source: str | None = None
    #: The request's inference options (``tta``, ``threshold``) over the server's.
    options: dict = field(default_factory=dict)

    def public(self, retention_s: float, now: float | None = None) -> dict:
        """What ``GET /jobs/{id}`` answers: the record plus rate, ETA and expiry."""
        now = time.time() if now is None else now
        rate = eta = None
        if self.size and self.tiles_total:
            tile_pixels = self.size[0] * self.size[1] / self.tiles_total
            if self.finished_at and self.started_at and self.status == JobStatus.completed.value:
                rate, eta = self.size[0] * self.size[1] / max(self.finished_at - self.started_at, 1e-6), 0.0
            elif self.status == JobStatus.in_progress.value and self.segmenting_since and self.tiles_done > self.tiles_at_start:
                per_second = (self.tiles_done - self.tiles_at_start) / max(now - self.segmenting_since, 1e-6)
                rate, eta = per_second * tile_pixels, (self.tiles_total - self.tiles_done) / per_second
        body = {key: value for key, value in asdict(self).items() if key not in ("owner", "result", "segmenting_since", "tiles_at_start", "source")}
        body.update(
            pixels_per_second=rate,
            eta_seconds=eta,
            progress=(self.tiles_done / self.tiles_total) if self.tiles_total else 0.0,
            expires_at=(self.finished_at + retention_s) if self.finished_at else None,
            result_url=f"/jobs/{self.job_id}/result" if self.status == JobStatus.completed.value else None,
            filename=self.result["filename"] if self.result else None,
        )
        return body


class JobStore:
    """The results folder: create, read, update, cancel and delete job records and their files."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self.root = settings.root
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        """The job's folder; ids are hex uuids, anything else names no job."""
        if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def new(self, fmt: str) -> JobRecord:
        record = JobRecord(job_id=uuid.uuid4().hex, format=fmt, owner=list(process_identity()))
        self.folder(record.job_id).mkdir()
        self.save(record)
        return record

    def save(self, record: JobRecord) -> None:
        """Write the record atomically (temporary file, rename): readers never see half of it."""
        folder = self.folder(record.job_id)
        temporary = folder / f".{RECORD}.{threading.get_ident()}.tmp"
        temporary.write_text(json.dumps(asdict(record)))
        os.replace(temporary, folder / RECORD)

    def load(self, job_id: str) -> JobRecord:
        """The job's record; KeyError when there is no such job (or it has expired)."""
        folder = self.folder(job_id)
        try:
            data = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            raise KeyError(job_id) from None
        if (folder / DELETED).exists():
            raise KeyError(job_id)
        record = JobRecord(**data)
        if record.finished_at and record.finished_at + self.settings.retention_s < time.time():
            raise KeyError(job_id)
        return record

    def records(self) -> list[JobRecord]:
        """Every readable record in the folder."""
        found = []
        for folder in self.root.iterdir():
            try:
                found.append(self.load(folder.name))
            except KeyError:
                continue
        return found

    def active(self) -> list[JobRecord]:
        return [r for r in self.records() if r.status in ACTIVE]

    def retry_after(self) -> int:
        """Seconds until a queue place is likely free: the soonest running job's ETA."""
        etas = [r.public(self.settings.retention_s)["eta_seconds"] for r in self.active()]
        known = [e for e in etas if e is not None]
        return max(1, math.ceil(min(known))) if known else DEFAULT_RETRY_AFTER_S

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / CANCEL).exists()

    def request_cancel(self, job_id: str) -> JobRecord:
        """Ask a job to stop: a pending one is cancelled at once, a running one after its batch."""
        with self.lock:
            record = self.load(job_id)
            if record.status in ACTIVE:
                (self.folder(job_id) / CANCEL).touch()
                if record.status == JobStatus.pending.value:
                    self.finish(record, JobStatus.cancelled)
        return record

    def finish(self, record: JobRecord, status: JobStatus, error: dict | None = None) -> None:
        """Mark a job finished and remove every file of it but its record (and a completed result)."""
        record.status, record.error, record.finished_at = status.value, error, time.time()
        record.stage = JobStage.done.value
        keep = {RECORD, DELETED} | ({record.result["file"]} if record.result and status == JobStatus.completed else set())
        folder = self.folder(record.job_id)
        for path in folder.iterdir():
            if path.name not in keep and not path.name.startswith(f".{RECORD}"):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.save(record)

    def delete(self, job_id: str) -> None:
        """Remove a job's folder (its record and result)."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def cancel_and_delete(self, job_id: str) -> None:
        """Delete a job; a running one is cancelled and its folder removed when its thread stops."""
        record = self.request_cancel(job_id)
        if record.status == JobStatus.in_progress.value:
            (self.folder(job_id) / DELETED).touch()
        else:
            self.delete(job_id)

    def deleted(self, job_id: str) -> bool:
        return (self.folder(job_id) / DELETED).exists()

    def sweep(self) -> None:
        """Delete the folders of expired jobs and of folders without a readable record."""
        now = time.time()
        for folder in list(self.root.iterdir()):
            try:
                data = json.loads((folder / RECORD).read_text())
            except (OSError, ValueError):
                if folder.is_dir() and now - folder.stat().st_mtime > 60:  # a half-created job, long dead
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            finished = data.get("finished_at")
            if finished and finished + self.settings.retention_s < now:
                shutil.rmtree(folder, ignore_errors=True)

    def recover(self) -> list[str]:
        """At start-up: jobs left active by a process that is gone are failed; returns their ids."""
        failed = []
        with self.lock:
            for record in self.records():
                if record.status in ACTIVE and not process_alive(record.owner):
                    self.finish(record, JobStatus.failed, {
                        "status": 503, "error": "server_restarted",
                        "detail": "the server stopped while this job was queued or running; submit it again",
                    })
                    failed.append(record.job_id)
        self.sweep()
        return failed
