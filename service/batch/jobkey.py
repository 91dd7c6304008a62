"""The resume key of a batch job: what makes its finished outputs reusable by a rerun.

Folder and gigapixel jobs record :func:`job_key` with their work (the manifest's records, the
partial output's job file and the finished OME-Zarr's attributes). A rerun with the same key
reuses what is done; any other key redoes it. The key is a hash of

* the bundle file's SHA-256 (the model),
* the predictor's resolved options that decide the numbers
  (:meth:`~training.inference.options.InferenceOptions.result_settings`: tile size, TTA,
  blending, decision threshold; not the batch size or device, which decide only the speed),
* the job kind's own inputs: the outputs asked for (folder jobs); the input's size, identity
  and the chunking (gigapixel jobs).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from service.batch.scheduler import PredictorSpec

#: Hex digits a key keeps.
KEY_LENGTH = 16


def job_key(spec: PredictorSpec, **inputs: Any) -> str:
    """The key of a job run with ``spec`` over ``inputs`` (JSON-ready values, by name)."""
    settings = {"bundle": spec.sha256, **spec.options.result_settings(), **inputs}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]
