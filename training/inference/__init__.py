"""Inference: the one predictor, its options, the tile grid, blending, TTA and the decision rule."""
