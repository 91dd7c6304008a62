"""Preparing the next batches on a reader thread while the model runs on the current one.

:func:`prefetch` yields ``(batch, prepare(batch))`` in order; a daemon thread runs ``prepare``
(read the tile windows, mirror and normalise them) at most ``depth`` batches ahead, so memory
holds at most ``depth + 1`` prepared batches. An exception raised by ``prepare`` is re-raised in
the consumer; a consumer that stops early (an exception, a closed generator) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

#: Batches the reader thread may prepare ahead of the model.
PREFETCH_BATCHES = 2

Batch = TypeVar("Batch")
Prepared = TypeVar("Prepared")


def prefetch(
    batches: Sequence[Batch], prepare: Callable[[Batch], Prepared], depth: int = PREFETCH_BATCHES
) -> Iterator[tuple[Batch, Prepared]]:
    """``(batch, prepare(batch))`` for each batch, in order, prepared by a reader thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                ready.put((batch, prepare(batch)))
            ready.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)

    reader = threading.Thread(target=read, name="tessera-tile-reader", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        reader.join()
