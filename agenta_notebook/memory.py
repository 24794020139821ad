"""Pausing Python's cyclic garbage collector while a big tree or table is built.

A build allocates a few objects per span and frees none of them; with the collector on,
each of its passes walks the whole growing heap, which more than doubles the time of a
100k-span build. The pause is counted: builds on several threads (a view's redraw timer
and the notebook's own thread) overlap, and the collector comes back on when the last of
them is done, and only if it was on when the first began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


class _Pause:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.turned_off = False


_PAUSE = _Pause()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (counted across threads).

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    """
    pause = _PAUSE
    with pause.lock:
        if pause.depth == 0:
            pause.turned_off = gc.isenabled()
            if pause.turned_off:
                gc.disable()
        pause.depth += 1
    try:
        yield
    finally:
        with pause.lock:
            pause.depth -= 1
            if pause.depth == 0 and pause.turned_off:
                pause.turned_off = False
                gc.enable()
