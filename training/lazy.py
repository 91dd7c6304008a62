"""Packages whose public names import their modules on first use (PEP 562 ``__getattr__``).

``import training`` or ``from training.data.label_offset import ...`` must not load torch
models, albumentations or the trainer that the caller never touches: a package lists
``name -> defining module`` and :func:`lazy_attributes` gives it the ``__getattr__`` that imports
the module when the name is first read (and caches the value in the package), and the ``__dir__`` that lists them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, exports: dict[str, str],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports[name]``'s module imported on
    first use, the value stored in the package's ``namespace``; ``dir()`` lists the exports too."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
