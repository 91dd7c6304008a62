"""Tile skipping on a real slide: computed tiles equal a run without skipping, skipped ones are background."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.slides import tissue_image, write_svs
from training.inference.options import InferenceOptions
from training.inference.predictor import Predictor
from training.inference.skipping import TileSkip
from training.inference.slide import prepare_slide

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    return write_svs(tmp_path_factory.mktemp("predict") / "slide.svs", tissue_image(600, 800, seed=9, share=0.25), mpp=0.5)


def run(predictor, job, skip):
    height, width = job.source.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    probabilities = np.zeros((predictor.num_classes, height, width), np.float32)
    seen = []
    predictor.predict_to(job.source, labels=labels, probabilities=probabilities, stats=job.stats(predictor.info.normalization),
                         skip=skip, progress=lambda done, total: seen.append((done, total)))
    return labels, probabilities, seen


def test_computed_tiles_equal_a_run_without_skipping(svs, tiny_bundle):
    predictor = Predictor(tiny_bundle, InferenceOptions(tile=96))
    job = prepare_slide(svs, predictor.info)  # the tiny model has a class named background
    try:
        full, full_probs, _ = run(predictor, job, None)
        skipped, skipped_probs, seen = run(predictor, job, job.skip)
        grid = predictor.grid(*job.source.shape[:2])
        computed, declined = job.skip.split(grid.tiles())
        assert 0 < len(declined) < len(grid) and seen[-1] == (len(computed), len(computed))
        for tile in computed:
            y0, y1, x0, x1 = tile.output
            np.testing.assert_array_equal(skipped[y0:y1, x0:x1], full[y0:y1, x0:x1])
            np.testing.assert_array_equal(skipped_probs[:, y0:y1, x0:x1], full_probs[:, y0:y1, x0:x1])
        for tile in declined:
            y0, y1, x0, x1 = tile.output
            assert (skipped[y0:y1, x0:x1] == 0).all()
            assert (skipped_probs[0, y0:y1, x0:x1] == 1).all() and (skipped_probs[1, y0:y1, x0:x1] == 0).all()
    finally:
        job.close()


def test_skipping_with_blended_tiles_keeps_grid_order(svs, tiny_bundle):
    predictor = Predictor(tiny_bundle, InferenceOptions(tile=96, blend="gaussian", overlap=0.5))
    job = prepare_slide(svs, predictor.info, level=1)
    try:
        labels, probabilities, _ = run(predictor, job, TileSkip(lambda y0, y1, x0, x1: x0 < 60, 0))
        assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
        assert (labels[:, 120:] == 0).all()
    finally:
        job.close()
