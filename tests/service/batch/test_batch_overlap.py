"""The gigapixel job's ``dask.array.map_overlap``: on the input mirror-padded beforehand with our
mirror (numpy 'reflect') and ``boundary="none"`` it is byte-identical to ``Predictor.predict`` on
the whole image, for a valid-padded U-Net and a same-padded smp model, at sizes that are not
multiples of the chunk; dask's own ``boundary="reflect"`` (numpy 'symmetric') would change the
border."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

from service.batch import prepare
from service.batch.gigapixel.graph import padded_input, segment_block, segmentation
from service.batch.gigapixel.plan import GigapixelJob, plan_chunks
from service.batch.scheduler import adopt_predictor, release_predictor
from tests.support.batch import TILE
from tests.support.bundles import make_bundle
from tests.support.images import smooth_image
from training.io.writers import encode_probabilities
from training.mirror import mirror_pad
from training.normalization import Normalization

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: A small same-padded smp U-Net on RGB input (stride 8, measured halo 64 px at one channel).
RGB_SMP = {"arch": "smp", "name": "Unet", "encoder": "resnet18", "in_channels": 3, "num_classes": 2,
           "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
#: Tile of the smp model: 256 px in, 128 px kept per tile.
SMP_TILE = 256


def smp_bundle(path: Path, image: np.ndarray) -> Path:
    """The RGB smp model with random weights, its head centred on ``image`` so both classes occur."""
    pixels = torch.from_numpy(Normalization.apply(image, *Normalization().statistics(image)))[None]
    return make_bundle(RGB_SMP, path, classes=["a", "b"], batchnorm_statistics=False, probe=pixels).path


@pytest.fixture(scope="module")
def cases(bundle: Path, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray, int, int]]:
    """name -> (bundle, image written as a tiled TIFF next to it, tile, chunk); the valid U-Net is
    a copy of the batch tests' ``bundle``."""
    root = tmp_path_factory.mktemp("overlap")
    gray = smooth_image(250, 330, 7)  # 250 = 2 x 104 + 42, 330 = 3 x 104 + 18
    rgb = np.stack([smooth_image(300, 420, seed) for seed in (1, 2, 3)], axis=-1)  # 300 = 2 x 128 + 44
    tifffile.imwrite(root / "gray.tif", gray, tile=(64, 64))
    tifffile.imwrite(root / "rgb.tif", rgb, tile=(64, 64), photometric="rgb")
    return {
        "valid-unet": (Path(shutil.copy(bundle, root / "unet.safetensors")), gray, TILE, 104),
        "same-smp": (smp_bundle(root / "smp.safetensors", rgb), rgb, SMP_TILE, 128),
    }


def job_for(bundle: Path, image: np.ndarray, tile: int, chunk: int, source: Path):
    """The spec, predictor and job of a gigapixel run of ``image`` (stored at ``source``),
    without a partial output (nothing is written here)."""
    spec, predictor = prepare(bundle, tile=tile, device="cpu")
    plan, chunks = plan_chunks(predictor, *image.shape[:2], chunk)
    mean, std = predictor.statistics(image)
    job = GigapixelJob(
        source=str(source), partial="", shape=image.shape, dtype=str(image.dtype), chunk=chunks, plan=plan,
        classes=predictor.num_classes, probabilities=True, mean=tuple(map(float, np.atleast_1d(mean))),
        std=tuple(map(float, np.atleast_1d(std))), max_pixels=None,
    )
    return spec, predictor, job


@pytest.fixture(params=["valid-unet", "same-smp"])
def case(request, cases, tmp_path_factory):
    bundle, image, tile, chunk = cases[request.param]
    source = bundle.parent / ("gray.tif" if image.ndim == 2 else "rgb.tif")
    spec, predictor, job = job_for(bundle, image, tile, chunk, source)
    adopt_predictor(spec, predictor)
    yield request.param, image, spec, predictor, job
    release_predictor(spec)


def test_plan_depth_is_the_model_context(case) -> None:
    name, image, _, predictor, job = case
    geometry = predictor.geometry
    context = geometry.margin if geometry.padding == "valid" else geometry.halo
    assert (name == "valid-unet") == (geometry.padding == "valid") and context == geometry.context > 0
    assert job.plan.before == (context, context)
    assert job.plan.after == (context, context)  # these tiles keep a whole number of strides
    assert job.grid[0] > 2 and job.grid[1] > 2
    assert image.shape[0] % job.chunk[0] and image.shape[1] % job.chunk[1]


def test_the_lazy_padding_is_our_mirror_not_dasks_reflect(case) -> None:
    _, image, _, _, job = case
    (by, bx), (ay, ax) = job.plan.before, job.plan.beyond
    padded = padded_input(job).compute(scheduler="synchronous")
    assert np.array_equal(padded, mirror_pad(image, (by, bx), (ay, ax)))
    assert np.array_equal(padded, np.pad(image, ((by, ay), (bx, ax), *[(0, 0)] * (image.ndim - 2)), mode="reflect"))
    lazy = da.from_array(image, chunks=(*job.chunk, *image.shape[2:]))
    theirs = da.overlap.overlap(lazy, depth={0: by, 1: bx}, boundary="reflect").blocks[0, 0].compute()
    symmetric = np.pad(image, ((by, 0), (bx, 0), *[(0, 0)] * (image.ndim - 2)), mode="symmetric")
    assert np.array_equal(theirs[:by, :bx], symmetric[:by, :bx])
    assert not np.array_equal(theirs[:by, :bx], padded[:by, :bx])
    assert np.array_equal(theirs[by:, bx:], image[: job.chunk[0] + by, : job.chunk[1] + bx])


def test_map_overlap_is_byte_identical_to_predict(case) -> None:
    name, image, spec, predictor, job = case
    expected = predictor.predict(image, probabilities=True)
    result = segmentation(padded_input(job), job, spec).compute(scheduler="synchronous")
    assert result.shape == (3, *image.shape[:2])
    np.testing.assert_array_equal(result[0], expected.labels)
    np.testing.assert_array_equal(result[1:], encode_probabilities(expected.probabilities, np.uint8))
    assert 0.05 < expected.labels.mean() < 0.95, name
    window = segmentation(padded_input(job), job, spec, rows=(1, 2), cols=(1, 3)).compute(scheduler="synchronous")
    (ch, cw), y1, x1 = job.chunk, min(2 * job.chunk[0], image.shape[0]), min(3 * job.chunk[1], image.shape[1])
    np.testing.assert_array_equal(window, result[:, ch:y1, cw:x1])


def interior(predictor, height: int, width: int) -> np.ndarray:
    """Pixels output by tiles whose input window lies inside the image (no mirrored pixel read)."""
    mask = np.zeros((height, width), bool)
    for tile in predictor.grid(height, width).tiles():
        wy0, wy1, wx0, wx1 = tile.window
        if wy0 >= 0 and wx0 >= 0 and wy1 <= height and wx1 <= width:
            y0, y1, x0, x1 = tile.output
            mask[y0:y1, x0:x1] = True
    return mask


def test_dasks_reflect_boundary_would_change_the_border(cases, tmp_path: Path) -> None:
    """The same block function on the unpadded input with dask's ``boundary="reflect"`` (sizes a
    whole number of tile steps, so its depth-wide border is all the tiles read): identical where
    no tile reads past the image, different at the border."""
    bundle, _, tile, chunk = cases["valid-unet"]
    image = smooth_image(156, 260, 3)  # 3 and 5 tile steps of 52 px; 156 = 104 + 52
    tifffile.imwrite(tmp_path / "steps.tif", image, tile=(64, 64))
    spec, predictor, job = job_for(bundle, image, tile, chunk, tmp_path / "steps.tif")
    depth = job.plan.before[0]
    assert job.plan.before == job.plan.after == job.plan.beyond == (depth, depth)
    adopt_predictor(spec, predictor)
    try:
        ours = segmentation(padded_input(job), job, spec).compute(scheduler="synchronous")
        theirs = da.map_overlap(
            segment_block, da.from_array(image, chunks=job.chunk), depth=depth, boundary="reflect", trim=False,
            chunks=((3,), *da.from_array(image, chunks=job.chunk).chunks), new_axis=[0], dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8), job=job, spec=spec, origin=(0, 0),
        ).compute(scheduler="synchronous")
    finally:
        release_predictor(spec)
    expected = predictor.predict(image, probabilities=True)
    np.testing.assert_array_equal(ours[1:], encode_probabilities(expected.probabilities, np.uint8))
    inside = interior(predictor, *image.shape)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(theirs[:, inside], ours[:, inside])
    differs = (theirs != ours).any(axis=0)
    assert differs.any() and not differs[inside].any()
