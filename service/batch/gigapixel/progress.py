"""What a running gigapixel job has done, counted in tiles, in ``DST/manifest.jsonl`` and on a bar.

A chunk holds the tiles whose output box starts inside it (chunks are whole tile steps, so every
tile belongs to exactly one chunk). When a chunk's done-marker is written its tiles are done: the
computed ones and, apart, the ones skipped (no tissue). The figures go to

* the callbacks: ``progress(chunks_done, chunks)`` (the Python API's) and
  ``tile_progress(tiles_done, tiles_to_compute, note=...)`` (the command line's bar), skipped tiles
  not counted in either number of the latter (they cost nothing), ``note`` saying how many were
  skipped;
* the job's manifest record (:class:`~service.batch.manifest.Manifest`, the one folder jobs
  write), appended at the start, at most every :data:`MANIFEST_INTERVAL` seconds while the job
  runs, and at its end::

    {"input": "slide.svs", "kind": "gigapixel", "status": "running" | "ok" | "failed",
     "output": "slide.zarr", "job": "<key>", "chunks": 49, "chunks_done": 12,
     "tiles": 2401, "tiles_done": 610, "tiles_skipped": 1650, "tiles_skipped_done": 402,
     "skipped_share": 0.687, "seconds": 81.2, "eta_seconds": 251.0, "updated": "2026-...Z"}

``tiles_done`` counts computed and skipped tiles of finished chunks alike; ``eta_seconds`` scales
the time spent on the computed tiles of this run to the ones left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from service.batch.manifest import MANIFEST_NAME, Manifest, utc_now

#: Least seconds between two "running" records of one job in the manifest.
MANIFEST_INTERVAL = 2.0

#: ``tile_progress(tiles_done, tiles_to_compute, note=...)``: computed tiles only.
TileProgress = Callable[..., None]


def tiles_per_chunk(grid, chunk: tuple[int, int], skipped: Iterable) -> dict[tuple[int, int], list[int]]:
    """``{chunk index: [tiles, skipped tiles]}`` of a tile ``grid`` cut in ``chunk``-pixel chunks."""
    rows, cols = -(-grid.height // chunk[0]), -(-grid.width // chunk[1])
    counts = {(r, c): [0, 0] for r in range(rows) for c in range(cols)}
    for tile in grid.tiles():
        counts[chunk_of(tile, chunk)][0] += 1
    for tile in skipped:
        counts[chunk_of(tile, chunk)][1] += 1
    return counts


def chunk_of(tile, chunk: tuple[int, int]) -> tuple[int, int]:
    """The chunk holding the first output pixel of ``tile``."""
    y0, _, x0, _ = tile.output
    return y0 // chunk[0], x0 // chunk[1]


class JobProgress:
    """Tiles done of one gigapixel job, reported to a callback and to the job's manifest record."""

    def __init__(self, root: Path, record: dict, counts: dict[tuple[int, int], list[int]],
                 progress: TileProgress | None = None, chunk_progress: Callable[[int, int], None] | None = None) -> None:
        self.manifest = Manifest(root / MANIFEST_NAME)
        self.record, self.counts, self.callback, self.chunk_callback = record, counts, progress, chunk_progress
        self.done: set[tuple[int, int]] = set()
        self.started = time.perf_counter()
        self.computed_before = 0  # computed tiles already done when this run started
        self.last_written = 0.0

    def resume(self, finished: Iterable[tuple[int, int]]) -> None:
        """Chunks finished by an earlier run of the job: counted done, not timed."""
        self.done.update(finished)
        self.computed_before = self.figures()["tiles_computed_done"]
        self.report("running", force=True)

    def chunk_done(self, index: tuple[int, int]) -> None:
        self.done.add(index)
        self.report("running")

    def figures(self) -> dict:
        """The counts: chunks and tiles, done and in all, skipped apart, and the time left."""
        tiles = sum(n for n, _ in self.counts.values())
        skipped = sum(s for _, s in self.counts.values())
        done = [self.counts.get(i, [0, 0]) for i in self.done]
        tiles_done, skipped_done = sum(n for n, _ in done), sum(s for _, s in done)
        computed_done, to_compute = tiles_done - skipped_done, tiles - skipped
        seconds = time.perf_counter() - self.started
        this_run = computed_done - self.computed_before
        eta = seconds / this_run * (to_compute - computed_done) if this_run > 0 else None
        return {"chunks": len(self.counts), "chunks_done": len(self.done), "tiles": tiles, "tiles_done": tiles_done,
                "tiles_skipped": skipped, "tiles_skipped_done": skipped_done,
                "skipped_share": round(skipped / max(tiles, 1), 6), "tiles_computed_done": computed_done,
                "tiles_to_compute": to_compute, "seconds": round(seconds, 1),
                "eta_seconds": round(eta, 1) if eta is not None else None}

    def report(self, status: str, force: bool = False) -> None:
        """Append the manifest record when ``force``d or due, then tell the callbacks (which may
        raise to stop the job)."""
        figures = self.figures()
        now = time.perf_counter()
        if force or now - self.last_written >= MANIFEST_INTERVAL:
            self.write(status, figures)
        if self.chunk_callback is not None:
            self.chunk_callback(figures["chunks_done"], figures["chunks"])
        if self.callback is not None:
            note = f"{figures['tiles_skipped']} skipped: no tissue" if figures["tiles_skipped"] else ""
            self.callback(figures["tiles_computed_done"], figures["tiles_to_compute"], note=note)

    def write(self, status: str, figures: dict, **extra) -> None:
        self.last_written = time.perf_counter()
        self.manifest.append({**self.record, **figures, "status": status, "updated": utc_now(), **extra})

    def finish(self, status: str, **extra) -> None:
        """The last record of this run (``ok``, ``failed`` or ``stopped``), the manifest then
        compacted to one line per input; no callbacks."""
        self.write(status, self.figures(), **extra)
        self.manifest.compact([self.record["input"]])
