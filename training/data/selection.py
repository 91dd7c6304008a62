"""Selections: which pairs of a folder a split uses, by stem, stem range or position.

One parser serves ``data.train``/``data.val`` in training configs, ``--select`` on the command line
and :meth:`training.data.dataset.SegmentationFolder.select`. A selection is a comma-separated text,
a list of such texts, or a text file with one item per line; its items are:

* ``7`` or ``img_3`` -- a **stem** (the file name without its suffix), exactly as in the folder;
* ``21-40`` -- a **stem range**: the stems from ``21`` through ``40`` in natural order (``2``
  before ``10``); both bounds must be stems of the folder;
* ``pos:0-4,9`` -- **positions** (0-based, natural stem order): ``pos:`` turns every item after it,
  to the end of the text, into a position or an inclusive range of positions.

A number always means the stem it spells: in a folder whose stems are ``21`` .. ``40``, ``37-40``
is the last four images and ``pos:0-3`` the first four. A number that is no stem is an error (it
names the number and the folder's stems) rather than a position in disguise. ``pos:`` is written
without a space so that YAML reads ``[pos:0-4]`` as a string; ``#`` is not used because YAML and
the shell read it as the start of a comment.

In Python, an ``int`` item is a position (``SegmentationFolder.select([0, 5])``); a ``str`` item is
read as above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

#: The prefix that turns the rest of a selection text into positions.
POSITIONS = "pos:"

Items = Iterable[int | str] | str | Path


class SelectionError(ValueError):
    """A selection that names no stem, a position outside the folder, or a pair twice."""


def parse_positions(text: str) -> list[int]:
    """``"0-24, 27"`` -> ``[0, 1, ..., 24, 27]`` (inclusive ranges, comma separated)."""
    indices: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part.strip())
        if not match:
            raise SelectionError(
                f"cannot read positions {text!r}: after '{POSITIONS}' give positions and ranges, e.g. "
                f"'{POSITIONS}0-24,27'"
            )
        if match.group(3) is not None:
            indices.append(int(match.group(3)))
        else:
            first, last = int(match.group(1)), int(match.group(2))
            if last < first:
                raise SelectionError(f"position range {part.strip()!r} runs backwards")
            indices.extend(range(first, last + 1))
    return indices


def select(stems: Sequence[str], items: Items, where: str | Path = "the folder") -> list[int]:
    """The indices into ``stems`` (the folder's stems in natural order) that ``items`` select,
    in the order given (see the module docstring). ``where`` names the folder in errors."""
    index = {stem: i for i, stem in enumerate(stems)}
    chosen: list[int] = []
    for item in _items(items, index):
        if isinstance(item, int):
            chosen.append(_position(item, len(stems)))
        else:
            chosen.extend(_stems(item, stems, index, where))
    seen: set[int] = set()
    for i in chosen:
        if i in seen:
            raise SelectionError(f"selection lists the pair {stems[i]!r} twice")
        seen.add(i)
    return chosen


def _items(items: Items, index: dict[str, int]) -> Iterator[int | str]:
    """Positions (ints) and stem items (strings) in order: a text file's lines or a text are split
    at commas; ``pos:`` makes the rest of its text positions. A whole text that is a stem stays one."""
    if isinstance(items, Path) or (isinstance(items, str) and Path(items).is_file()):
        items = [line.strip() for line in Path(items).read_text().splitlines() if line.strip()]
    elif isinstance(items, str):
        items = [items]
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            yield int(item)
            continue
        text = str(item).strip()
        if text in index:
            yield text
            continue
        head, sep, tail = text.partition(POSITIONS)
        if sep and head.strip() and not head.rstrip().endswith(","):
            raise SelectionError(f"cannot read selection {text!r}: separate '{POSITIONS}' from the stems before it by a comma")
        yield from (part.strip() for part in head.split(",") if part.strip())
        if sep:
            yield from parse_positions(tail)


def _position(position: int, count: int) -> int:
    if not 0 <= position < count:
        raise SelectionError(f"selection position {position} is outside 0..{count - 1}")
    return position


def _stems(item: str, stems: Sequence[str], index: dict[str, int], where: str | Path) -> list[int]:
    """One stem, or a range ``A-B`` of stems from ``A`` through ``B`` in the folder's order."""
    if item in index:
        return [index[item]]
    match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
    if match is None:
        raise SelectionError(f"selection names {item!r}, which is not a stem in {where}{_hint(item, stems)}")
    missing = [bound for bound in match.groups() if bound not in index]
    if missing:
        raise SelectionError(
            f"selection range {item!r}: {missing[0]!r} is not a stem in {where}{_hint(item, stems)}"
        )
    first, last = index[match.group(1)], index[match.group(2)]
    if last < first:
        raise SelectionError(f"selection range {item!r} runs backwards")
    return list(range(first, last + 1))


def _hint(item: str, stems: Sequence[str]) -> str:
    """For a number or range that names no stem: the folder's stems, and how positions are written."""
    if not re.fullmatch(r"[\d\s-]+", item) or not stems:
        return ""
    shown = ", ".join(stems) if len(stems) <= 6 else f"{stems[0]} .. {stems[-1]}"
    return f" (stems: {shown}; positions are written '{POSITIONS}{item}')"
