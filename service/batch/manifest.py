"""The manifest of a folder job: ``DST/manifest.jsonl``, one JSON object per line.

Each record says what happened to one input::

    {"input": "a/b.png", "output": "a/b.png", "status": "ok" | "failed" | "refused",
     "error": null | "message", "reason": null | "corrupt" | ..., "seconds": 0.031,
     "input_sha256": "...", "outputs": {"labels": {"path": "a/b.png", "sha256": "..."}, ...},
     "job": "<settings key>", "finished": "2026-11-23T21:40:00Z"}

While a job runs, records are appended (one line, flushed and fsynced, as each input finishes),
so a killed job keeps every record of the work it completed; a torn last line is ignored on
reading. When the job ends the file is rewritten (atomically) with the latest record of each
input, in input order. A rerun skips an input only when its latest record is ``ok`` for the same
settings (``job``), the input's bytes still hash to ``input_sha256``, and every output still
hashes to the recorded ``sha256``: existence alone proves nothing.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from service.batch.files import UnsafeNameError, atomic_write, inside, safe_relative
from training.bundle import file_sha256

#: File name of the manifest inside DST.
MANIFEST_NAME = "manifest.jsonl"


def utc_now() -> str:
    """The time of a record, UTC to the second: ``2026-11-23T21:40:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Manifest:
    """Append-only JSON-lines records, the latest per input winning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = self._read()

    def _read(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a killed job
            if isinstance(record, dict) and isinstance(record.get("input"), str):
                records[record["input"]] = record
        return records

    def append(self, record: dict) -> None:
        """Record one input's outcome, durably, before the next one is reported."""
        self.records[record["input"]] = record
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self, order: list[str]) -> None:
        """Rewrite the file with the latest record of each input: ``order`` first, then the rest."""
        names = [n for n in order if n in self.records]
        names += sorted(set(self.records) - set(names))
        text = "".join(json.dumps(self.records[n], sort_keys=True) + "\n" for n in names)
        atomic_write(self.path, text.encode("utf-8"))

    def finished(self, name: str, job: str, input_sha256: str, root: Path) -> dict | None:
        """The ``ok`` record of ``name`` if it is still valid (see the module docstring)."""
        record = self.records.get(name)
        if not record or record.get("status") != "ok" or record.get("job") != job:
            return None
        if record.get("input_sha256") != input_sha256:
            return None
        for output in (record.get("outputs") or {}).values():
            try:
                path = inside(root, safe_relative(output["path"]))
            except (UnsafeNameError, KeyError, TypeError):
                return None
            if not path.is_file() or file_sha256(path) != output["sha256"]:
                return None
        return record
