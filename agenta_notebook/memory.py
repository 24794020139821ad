"""Pausing Python's cyclic garbage collector while a big tree or table is built.

A build allocates a few objects per span and frees none of them; with the collector on,
each of its passes walks the whole growing heap, which more than doubles the time of a
100k-span build. The pause is counted: builds on several threads (a view's redraw timer
and the notebook's own thread) overlap, and the collector comes back on when the last of
them is done, and only if it was on when the first began.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from agenta_notebook import forksafe

__all__ = ["gc_paused"]


class _Pause:
    def __init__(self) -> None:
        self.lock = forksafe.new_lock()
        self.depth = 0
        self.turned_off = False
        forksafe.register(self.after_fork)

    def after_fork(self) -> None:
        """In a forked child no build is running: the collector back on if we paused it."""
        self.depth = 0
        if self.turned_off:
            self.turned_off = False
            gc.enable()


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
            pause.depth = max(0, pause.depth - 1)  # a fork may have reset it meanwhile
            if pause.depth == 0 and pause.turned_off:
                pause.turned_off = False
                gc.enable()
