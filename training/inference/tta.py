"""Test-time augmentation: the views a predictor averages, and what they need from a bundle.

A view is ``(turns, flip)``: the input flipped horizontally (if ``flip``), then turned by
``turns`` x 90 degrees; the model's output is turned and flipped back before averaging.

* :data:`TTA_MODES` -- ``none`` (1 view), ``flips`` (4), ``d4`` (the 8 dihedral views);
* :func:`tta_mode` -- the mode name from what callers pass (a name, or True/False);
* :func:`tta_corrections` -- for a model trained with labels drawn off-centre, the move that puts
  each view's probabilities back where the labels sit (:mod:`training.data.label_offset`);
* :func:`tta_caveat` -- why a mode may cost a bundle accuracy (views it never trained on).
"""

from __future__ import annotations

from training.bundle import BundleInfo
from training.data.augment_config import read_config
from training.data.label_offset import bundle_label_offset, view_correction
from training.errors import OptionError

#: Test-time augmentations: name -> list of (rotations by 90 degrees, horizontal flip).
TTA_MODES: dict[str, list[tuple[int, bool]]] = {
    "none": [(0, False)],
    "flips": [(0, False), (0, True), (2, True), (2, False)],
    "d4": [(k, flip) for k in range(4) for flip in (False, True)],
}


def tta_mode(tta: bool | str | None) -> str:
    """A :data:`TTA_MODES` name from a bool (True: ``d4``) or a mode name; ValueError otherwise."""
    if tta is True:
        return "d4"
    if tta is False or tta is None:
        return "none"
    if tta not in TTA_MODES:
        raise OptionError(f"tta must be one of {', '.join(TTA_MODES)} (or true/false), not {tta!r}")
    return tta


def tta_corrections(info: BundleInfo, transforms: list[tuple[int, bool]]) -> list[tuple[float, float]] | None:
    """Per test-time view, the move that puts its un-viewed probabilities back where a model
    trained with ``data.label_offset`` draws labels (:func:`training.data.label_offset.view_correction`);
    None when there is one view or the labels were centred."""
    offset = bundle_label_offset(info.provenance)
    if len(transforms) < 2 or not any(offset):
        return None
    return [view_correction(offset, turns, flip) for turns, flip in transforms]


def tta_caveat(info: BundleInfo, mode: str) -> str | None:
    """Why test-time augmentation ``mode`` may cost this bundle accuracy, from its training config
    (provenance): flips or turns it never trained on. None when it trained on them, or when the
    bundle does not say. (Labels drawn off-centre are no caveat: :func:`tta_corrections`.)"""
    if mode == "none":
        return None
    config = (info.provenance or {}).get("config", {})
    if config.get("augment") is None:
        return None
    try:
        augment = read_config(config["augment"])
    except (ValueError, OSError):
        return None
    unseen = []
    if augment.get("flip", {}).get("axes") != "both":
        unseen.append("flips" if "flip" not in augment else "flips on both axes")
    if mode == "d4" and "rotate90" not in augment:
        unseen.append("90-degree turns")
    if not unseen:
        return None
    return (f"this model was trained without {' or '.join(unseen)}: test-time augmentation averages in views "
            "it never saw")
