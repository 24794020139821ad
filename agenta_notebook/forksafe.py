"""Fork safety: every lock of the package, and its per-process state, reset in a child.

`os.fork()` (``multiprocessing``'s "fork" start method) copies the process with only the
forking thread: a lock another thread held at that moment stays held in the child for
ever, and threads the parent's objects count on (a redraw timer, the save worker) do not
exist there. So every lock of this package is made here, with `new_lock()` or
`new_rlock()`, and is reinitialised (released) in the child; and every object that holds
per-process state registers a function with `register()`, called in the child after the
locks are reset. A lock or a thread added later must do the same (see
docs/architecture.md, "Fork").

The locks and the registered objects are held weakly: a dropped trace is forgotten.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from agenta_notebook.errors import internal_error

__all__ = ["forks_seen", "new_lock", "new_rlock", "register"]

_LOCKS: weakref.WeakSet[Any] = weakref.WeakSet()
#: what to call in a child: plain functions, or weak references to bound methods
_RESETS: list[Callable[[], Callable[[], None] | None]] = []
_FORKS = [0]


def new_lock() -> threading.Lock:
    """A `threading.Lock` that is released in a forked child."""
    lock = threading.Lock()
    _LOCKS.add(lock)
    return lock


def new_rlock() -> threading.RLock:
    """A `threading.RLock` that is released in a forked child."""
    lock = threading.RLock()
    _LOCKS.add(lock)
    return lock


def register(reset: Callable[[], None]) -> None:
    """Call `reset()` in every forked child (after the locks are released).

    A bound method is held weakly: registering does not keep its object alive.
    """
    if hasattr(reset, "__self__") and hasattr(reset, "__func__"):
        _RESETS.append(weakref.WeakMethod(reset))
    else:
        _RESETS.append(lambda: reset)


def forks_seen() -> int:
    """How many times this process is a forked child of a process that imported us."""
    return _FORKS[0]


def _in_child() -> None:
    # Only the forking thread exists here: nothing can race with this.
    _FORKS[0] += 1
    for lock in list(_LOCKS):
        lock._at_fork_reinit()
    alive: list[Callable[[], Callable[[], None] | None]] = []
    for ref in _RESETS:
        reset = ref()
        if reset is None:
            continue
        alive.append(ref)
        try:
            reset()
        except Exception:  # the child goes on; what failed is reported
            internal_error("resetting state in a forked child")
    _RESETS[:] = alive


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
