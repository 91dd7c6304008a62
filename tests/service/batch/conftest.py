"""Fixtures of the batch-job tests: their tiny bundle and a two-process dask cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.batch import prepare
from service.batch.scheduler import open_runner
from tests.support.batch import CLASSES, TILE, blob_probe
from tests.support.bundles import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny valid-padded U-Net (1 channel, classes background and cell), its head centred
    on :func:`~tests.support.batch.blob_probe` so that it predicts both classes on blob images."""
    return make_bundle(path=tmp_path_factory.mktemp("bundle") / "tiny.safetensors", classes=CLASSES, probe=blob_probe()).path


@pytest.fixture(scope="module")
def local2(bundle: Path):
    """``--scheduler local:2``: one LocalCluster of 2 worker processes for a test module, on the
    module's ``bundle``; yields ``(spec, predictor, runner)``."""
    spec, predictor = prepare(bundle, tile=TILE, device="cpu")
    runner = open_runner("local:2", spec, predictor)
    yield spec, predictor, runner
    runner.close()
