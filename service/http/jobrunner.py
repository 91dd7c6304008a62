"""Running the jobs of :mod:`service.http.jobstore`: submit checks, the job thread, progress.

:class:`JobManager` is what the job routes talk to. ``submit`` spools the upload into a new job's
folder, checks it cheaply (empty, kind, pixel limit on the header; a TIFF is opened lazily and its
channels checked) so a bad file is refused at once with the status ``POST /segment`` would give,
and queues it. One job thread per worker runs the queue: the upload is opened (a TIFF window by
window, anything else decoded), segmented tile by tile into the result file by
:func:`service.http.jobs.segment_file`, and the record is updated after every tile batch.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import tifffile
from PIL import Image, UnidentifiedImageError

from service.http.jobs import JobFormat, JobResult, segment_file, segment_slide_file
from service.http.jobstore import (
    CANCEL,
    PROGRESS_INTERVAL_S,
    JobCancelled,
    JobRecord,
    JobStage,
    JobStatus,
    JobStore,
)
from service.http.uploads import (
    STATUS_FOR_REASON,
    Limits,
    UploadError,
    open_upload,
    upload_error,
)
from training.errors import TesseraError
from training.inference.predictor import Predictor
from training.io.images import (
    TIFF_MAGIC,
    ImageError,
    pillow_orientation,
    tiff_orientation,
)
from training.io.readers import fit_channels
from training.io.slides import ResolutionError

UPLOAD = "upload"


class QueueFull(Exception):
    """``TESSERA_MAX_JOBS`` jobs are pending or running; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int, limit: int) -> None:
        super().__init__(f"{limit} jobs are queued or running, the most this server takes (TESSERA_MAX_JOBS)")
        self.retry_after = retry_after


def file_orientation(path: Path) -> int:
    """The orientation tag of an image file, read from its header (1 when none or unreadable)."""
    try:
        with path.open("rb") as file:
            magic = file.read(4)
        if magic in TIFF_MAGIC:
            with tifffile.TiffFile(path) as tiff:
                return tiff_orientation(tiff.series[0].keyframe)
        with Image.open(path) as image:
            return pillow_orientation(image)
    except Exception:  # decoding reports an unreadable file
        return 1


def probe(path: Path, limits: Limits, in_channels: int) -> None:
    """Refuse an upload that cannot become a job, reading no more than its header (TIFF: lazily)."""
    size = path.stat().st_size
    if size == 0:
        raise UploadError(400, "empty", "empty image: no bytes")
    with path.open("rb") as file:
        magic = file.read(4)
    if magic in TIFF_MAGIC:
        fit_channels(open_upload(path, limits), in_channels)
        return
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise UploadError(415, "unsupported", "not an image Tessera can read (PNG, JPEG, TIFF, BMP)") from None
    except Exception as error:
        raise UploadError(400, "corrupt", f"image header cannot be read ({error})") from None
    if width * height > limits.max_pixels:
        raise upload_error(ImageError(f"image is {width}x{height} = {width * height:,} pixels, over the limit of {limits.max_pixels:,}", "too_large"))


class JobManager:
    """A worker's side of the job system: submit, cancel and the job thread."""

    def __init__(self, store: JobStore, predictor: Callable[[dict], Predictor], limits: Limits, in_channels: int,
                 on_pixels: Callable[[int], None] | None = None) -> None:
        self.store, self.limits, self.in_channels = store, limits, in_channels
        self.make_predictor, self.predictor = predictor, None
        #: Predictors by the request options they were built with (the model is shared).
        self.predictors: dict[str, Predictor] = {}
        self.on_pixels = on_pixels
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="tessera-jobs", daemon=True)
        self.thread.start()

    def reserve(self, fmt: JobFormat, options: dict | None = None) -> JobRecord:
        """A new pending job with the request's inference ``options`` (``tta``, ``threshold``),
        or :class:`QueueFull`."""
        self.store.sweep()
        with self.store.lock:
            if len(self.store.active()) >= self.store.settings.max_jobs:
                raise QueueFull(self.store.retry_after(), self.store.settings.max_jobs)
            record = self.store.new(fmt.value)
        if options:
            record.options = dict(options)
            self.store.save(record)
        return record

    def upload_path(self, record: JobRecord) -> Path:
        return self.store.folder(record.job_id) / UPLOAD

    def accept(self, record: JobRecord, upload_bytes: int) -> JobRecord:
        """Check the spooled upload and queue the job; a bad upload deletes the job and raises."""
        path = self.upload_path(record)
        try:
            probe(path, self.limits, self.in_channels)
        except ImageError as error:
            self.store.delete(record.job_id)
            raise upload_error(error) from None
        except UploadError:
            self.store.delete(record.job_id)
            raise
        record.upload_bytes = upload_bytes
        record.orientation = file_orientation(path)
        self.store.save(record)
        self.queue.put(record.job_id)
        return record

    def predictor_for(self, options: dict) -> Predictor:
        """The predictor of the server's options with ``options`` over them, built once."""
        key = json.dumps(options, sort_keys=True)
        if key not in self.predictors:
            self.predictors[key] = self.make_predictor(options)
        return self.predictors[key]

    def accept_slide(self, record: JobRecord, slide: Path) -> JobRecord:
        """Queue a job that segments the whole-slide image ``slide`` (already checked to be one
        under the data root) in place of an upload."""
        record.source = str(slide)
        self.store.save(record)
        self.queue.put(record.job_id)
        return record

    def close(self) -> None:
        self.queue.put(None)

    def delete(self, job_id: str) -> None:
        """Cancel a queued or running job and delete it with its files (KeyError: no such job)."""
        self.store.cancel_and_delete(job_id)

    def _loop(self) -> None:
        while (job_id := self.queue.get()) is not None:
            try:
                self.run(job_id)
            except KeyError:  # deleted while queued
                pass
            except Exception:  # its folder vanished under it: nothing left to record
                pass
            if self.store.deleted(job_id):
                self.store.delete(job_id)

    def run(self, job_id: str) -> None:
        """Run one job to its end: completed, failed or cancelled."""
        record = self.store.load(job_id)
        if record.status != JobStatus.pending.value or self.store.cancel_requested(job_id):
            return
        record.status, record.stage, record.started_at = JobStatus.in_progress.value, JobStage.reading.value, time.time()
        self.store.save(record)
        folder = self.store.folder(job_id)
        try:
            self.predictor = self.predictor_for(record.options)
            result = self._segment(record, folder)
            name = f"result-{result.filename}"
            result.path.rename(folder / name)
            record.result = {"file": name, "filename": result.filename, "media_type": result.media_type}
            record.tiles_done = record.tiles_total or 0  # tiles skipped for want of tissue count as done
            self.store.finish(record, JobStatus.completed)
            if self.on_pixels:
                self.on_pixels(result.pixels)
        except JobCancelled:
            self.store.finish(record, JobStatus.cancelled)
        except UploadError as error:
            self.store.finish(record, JobStatus.failed, {"status": error.status, "error": error.error, "detail": error.detail})
        except ImageError as error:
            self.store.finish(record, JobStatus.failed, {"status": STATUS_FOR_REASON[error.reason], "error": error.reason, "detail": str(error)})
        except ResolutionError as error:  # a slide the model's resolution cannot be read at
            self.store.finish(record, JobStatus.failed, {"status": 422, "error": "resolution", "detail": str(error)})
        except TesseraError as error:  # e.g. a slide job whose model has no background class to skip with
            self.store.finish(record, JobStatus.failed, {"status": 422, "error": "invalid_option", "detail": str(error)})
        except Exception as error:  # a server fault: recorded, and the thread goes on with the next job
            self.store.finish(record, JobStatus.failed, {"status": 500, "error": "internal", "detail": f"{type(error).__name__}: {error}"})

    def _segment(self, record: JobRecord, folder: Path) -> JobResult:
        """Segment the job's upload (or slide) into a result file in ``folder / "work"``."""
        work = folder / "work"
        work.mkdir(exist_ok=True)
        if record.source is not None:
            return segment_slide_file(self.predictor, Path(record.source), JobFormat(record.format), work,
                                      self._progress(record), lambda size: self._started(record, size))
        source = open_upload(next(folder.glob(f"{UPLOAD}*")), self.limits)  # named by its kind
        self._started(record, source.shape[:2])
        return segment_file(self.predictor, source, JobFormat(record.format), work, self._progress(record))

    def _started(self, record: JobRecord, size: tuple[int, int]) -> None:
        """Record the size and tile count of the image about to be segmented."""
        record.size = [int(n) for n in size]
        record.tiles_total = len(self.predictor.grid(*record.size))
        self.store.save(record)

    def _progress(self, record: JobRecord) -> Callable[[int, int], None]:
        """The tiler's callback: record progress (at most every PROGRESS_INTERVAL_S), stop on cancel."""
        cancel = self.store.folder(record.job_id) / CANCEL
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if cancel.exists():
                raise JobCancelled(record.job_id)
            now = time.time()
            if record.segmenting_since is None:
                record.segmenting_since, record.tiles_at_start, record.stage = now, done, JobStage.segmenting.value
            record.tiles_done, record.tiles_total = done, total
            if done == total:
                record.stage = JobStage.writing.value
            if done == total or now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self.store.save(record)

        return progress
