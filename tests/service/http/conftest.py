"""Fixtures of the HTTP tests: one real server for the whole session, on a small bundle whose
mask is not trivial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bundles import make_bundle
from tests.support.images import isbi_slice
from tests.support.server import SMALL_THRESHOLD, TEST_MAX_UPLOAD_BYTES, serve


@pytest.fixture(scope="session")
def service_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small bundle the session's server serves: a random tiny U-Net whose head is centred on
    ISBI slice 25 as the predictor sees it, with the decision threshold :data:`SMALL_THRESHOLD`."""
    path = tmp_path_factory.mktemp("bundle") / "small.safetensors"
    return make_bundle(path=path, classes=["background", "foreground"], batchnorm_statistics=False,
                       probe=isbi_slice(25), threshold=SMALL_THRESHOLD).path


@pytest.fixture(scope="session")
def service_url(service_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real server for every HTTP test module of the session."""
    home = tmp_path_factory.mktemp("bentoml-home")
    with serve(service_bundle, home, {"TESSERA_MAX_UPLOAD_BYTES": str(TEST_MAX_UPLOAD_BYTES)}) as url:
        yield url
