"""What a bundle records about its halo, and how a predictor resolves the halo it is asked for.

A same-padded network's halo (the context a tile reads beyond its output) is scanned on images by
:mod:`training.inference.halo`; the scan (:class:`HaloScan`) is stored in the bundle
(``BundleInfo.halo``) with the impulse-response radius it replaces (:func:`with_scan`). A predictor
asks for the bundle's halo (``None``), a preset (:data:`HALO_PRESETS`: ``default`` -- labels equal to
the whole-image pass on all but 0.1% of the pixels -- or ``exact``, all but 1e-4) or a number of
pixels, and :func:`resolve_halo` answers with the geometry and the warning the choice deserves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from training.bundle import BundleInfo
from training.errors import OptionError
from training.geometry import TileGeometry

#: Preset name -> share of pixels whose label may differ from the whole-image pass.
HALO_PRESETS: dict[str, float] = {"default": 1e-3, "exact": 1e-4}


@dataclass
class HaloScan:
    """What :func:`scan_halos` measured.

    Attributes:
        agreement: halo (pixels) -> share of labels equal to the whole-image pass, the worst over
            ``tiles``, for every halo the scan ran (ascending).
        tiles: tile input sizes the agreement was measured at.
        pixels: image pixels compared per tile size and halo.
        presets: preset name -> ``{"halo", "agreement", "target", "reached"}``.
    """

    agreement: dict[int, float]
    tiles: list[int]
    pixels: int
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def halo_for(self, preset: str) -> int:
        """The halo of ``preset`` (OptionError naming the measured ones when it was not measured)."""
        if preset not in self.presets:
            raise OptionError(f"no measured halo for preset {preset!r}; measured: {', '.join(self.presets) or 'none'}")
        return int(self.presets[preset]["halo"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a bundle (``BundleInfo.halo``)."""
        return {
            "method": "agreement",
            "agreement": {str(h): a for h, a in self.agreement.items()},
            "tiles": list(self.tiles),
            "pixels": self.pixels,
            "presets": self.presets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HaloScan:
        return cls(
            agreement={int(h): float(a) for h, a in data.get("agreement", {}).items()},
            tiles=[int(t) for t in data.get("tiles", [])],
            pixels=int(data.get("pixels", 0)),
            presets=dict(data.get("presets", {})),
        )


def preset_target(preset: str) -> float:
    """The agreement a preset asks for (1 - the share of labels allowed to differ)."""
    if preset not in HALO_PRESETS:
        raise OptionError(f"halo preset must be one of {', '.join(HALO_PRESETS)}, not {preset!r}")
    return 1.0 - HALO_PRESETS[preset]


def override_note(halo_record: dict[str, Any] | None, halo: int) -> str:
    """The warning an explicit halo gets: what the bundle's scan measured at that halo, if it ran it."""
    text = f"halo {halo} px overrides the bundle's measured halo"
    if not halo_record:
        return text + " (this bundle has no agreement scan: tessera calibrate --halo measures one)"
    scan = HaloScan.from_dict(halo_record)
    presets = ", ".join(f"{name} {p['halo']} px" for name, p in scan.presets.items())
    if halo in scan.agreement:
        return (f"{text} ({presets}): labels equal to the whole-image pass on {scan.agreement[halo]:.4%} "
                f"of the pixels at {halo} px (measured at tiles {scan.tiles})")
    return f"{text} ({presets}); agreement at {halo} px was not measured (measured: {sorted(scan.agreement)} px)"


def impulse_halo(info: BundleInfo) -> int:
    """The impulse-response halo of a bundle: recorded beside a scan, else the geometry's."""
    return int(info.halo.get("impulse", info.geometry.halo))


def with_scan(info: BundleInfo, scan: HaloScan) -> BundleInfo:
    """``info`` with the scan stored (``info.halo``, the impulse halo kept beside it) and the
    geometry's halo set to the ``default`` preset's, so every predictor uses it unless told."""
    record = {**scan.to_dict(), "impulse": impulse_halo(info)}
    halo = scan.halo_for("default") if "default" in scan.presets else info.geometry.halo
    return dataclasses.replace(info, geometry=dataclasses.replace(info.geometry, halo=halo), halo=record)


def preset_halo(info: BundleInfo, preset: str) -> tuple[int, str | None]:
    """The halo of ``preset`` for a bundle, and a note when it falls back to the impulse halo
    (bundles measured without images)."""
    preset_target(preset)
    if not info.halo.get("presets"):
        return impulse_halo(info), (f"this bundle has no measured halo presets: the impulse-response halo "
                                    f"({impulse_halo(info)} px) stands in for {preset!r}; "
                                    "tessera calibrate --halo measures them")
    return HaloScan.from_dict(info.halo).halo_for(preset), None


def resolve_halo(info: BundleInfo, halo: int | str | None) -> tuple[TileGeometry, str | None]:
    """The bundle's geometry with the halo ``halo`` asks for (None: the bundle's; a preset name;
    pixels) and the warning it deserves: a number overriding the measured halo, or a preset falling
    back to the impulse-response radius. OptionError for a valid U-Net (its context is its margin)."""
    geometry = info.geometry
    if halo is None:
        return geometry, None
    if geometry.padding != "same":
        raise OptionError("halo applies to same-padded networks; a valid U-Net's tiles read its margin "
                         f"({geometry.margin} px) and are exact")
    note = None
    if isinstance(halo, str):
        halo, note = preset_halo(info, halo)
    elif halo != geometry.halo:
        note = override_note(info.halo, halo)
    return dataclasses.replace(geometry, halo=int(halo)), note
