"""Where things are: the repository root and the ISBI 2012 slices shipped with the package."""

from __future__ import annotations

from pathlib import Path

#: The repository root (``tests/`` is one of its folders).
ROOT = Path(__file__).resolve().parents[2]
#: Files shipped inside the ``training`` package.
ASSETS = ROOT / "training" / "assets"
#: ISBI 2012: 30 slices, ``image/<n>.png`` and ``label/<n>.png``.
ISBI = ASSETS / "isbi2012"
#: ISBI 2012 training slice 25 (a hold-out slice), 512x512 uint8.
ISBI_SLICE = ISBI / "image" / "25.png"
