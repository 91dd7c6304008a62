"""``path=`` relative to TESSERA_DATA_ROOT: each refusal has its 4xx and reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from service.http.data_root import DATA_ROOT_ENV, data_root, resolve_data_path
from service.http.uploads import UploadError
from tests.support.slides import tissue_image, write_svs


@pytest.fixture()
def root(tmp_path):
    store = tmp_path / "store"
    (store / "cases").mkdir(parents=True)
    write_svs(store / "cases" / "a.svs", tissue_image(300, 400), levels=2)
    tifffile.imwrite(store / "flat.tif", np.zeros((20, 20), np.uint8))
    (store / "notes.txt").write_text("not a slide")
    outside = tmp_path / "secret.svs"
    write_svs(outside, tissue_image(300, 400), levels=2)
    os.symlink(outside, store / "link.svs")
    os.symlink(store / "cases" / "a.svs", store / "inside.svs")
    return store.resolve()


def refusal(path: str, root) -> tuple[int, str]:
    with pytest.raises(UploadError) as caught:
        resolve_data_path(path, root)
    return caught.value.status, caught.value.error


def test_a_slide_under_the_root(root):
    assert resolve_data_path("cases/a.svs", root) == root / "cases" / "a.svs"
    assert resolve_data_path("inside.svs", root) == root / "cases" / "a.svs"  # a link staying inside


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [("/etc/passwd", 422, "absolute_path"), ("C:\\slides\\a.svs", 422, "absolute_path"),
     ("\\\\server\\share\\a.svs", 422, "absolute_path"), ("cases/../../secret.svs", 422, "parent_path"),
     ("..", 422, "parent_path"), ("link.svs", 422, "outside_root"), ("cases/missing.svs", 404, "not_found"),
     ("cases", 404, "not_found"), ("notes.txt", 415, "not_a_slide"), ("flat.tif", 415, "not_a_slide"),
     ("  ", 422, "invalid_option")],
)
def test_refusals(root, path, status, error):
    assert refusal(path, root) == (status, error)


def test_off_unless_configured(monkeypatch, root):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert data_root() is None
    assert refusal("cases/a.svs", None) == (422, "path_disabled")
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    assert data_root() == root
