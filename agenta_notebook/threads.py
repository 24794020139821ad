"""Carry the current span into threads, so work in a thread lands under the right parent.

`asyncio` tasks copy the context (and so the current span) on their own; threads do
not. When the IPython extension loads, it calls `enable_thread_propagation()`, which
turns on OpenTelemetry's `ThreadingInstrumentor`: `threading.Thread`, `threading.Timer`
and `concurrent.futures.ThreadPoolExecutor.submit` then start their work in the context
that was current when the thread was started or the work submitted.

Opting out: set the environment variable ``AGENTA_NOTEBOOK_THREADS=0`` (or ``false``,
``no``, ``off``) before loading the extension, or call `disable_thread_propagation()`.
If threading was already instrumented by someone else, it is left as it is, and
unloading the extension does not undo it.

A `threading.Thread` subclass that overrides `run` does not get the context (the
instrumentation wraps `Thread.run`); pass `target=` instead, or copy it yourself with
`contextvars.copy_context().run`.
"""

from __future__ import annotations

import os
import threading
from typing import Final

#: Environment variable that turns thread propagation off when set to 0/false/no/off.
ENV_VAR: Final = "AGENTA_NOTEBOOK_THREADS"
_FALSE: Final = frozenset({"0", "false", "no", "off"})

_lock = threading.Lock()
_enabled_by_us = False


def propagation_wanted() -> bool:
    """False when the user opted out with ``AGENTA_NOTEBOOK_THREADS=0``."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _FALSE


def is_propagating() -> bool:
    """True when threads started now inherit the current span (by us or by anyone)."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    return bool(ThreadingInstrumentor().is_instrumented_by_opentelemetry)


def enable_thread_propagation() -> bool:
    """Instrument threading unless the user opted out; True if propagation is on.

    >>> enable_thread_propagation()  # doctest: +SKIP
    True
    """
    global _enabled_by_us
    if not propagation_wanted():
        return False
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    with _lock:
        instrumentor = ThreadingInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(skip_dep_check=True)
            _enabled_by_us = True
        return True


def disable_thread_propagation() -> None:
    """Undo `enable_thread_propagation` (only if this package turned it on)."""
    global _enabled_by_us
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    with _lock:
        instrumentor = ThreadingInstrumentor()
        if _enabled_by_us and instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        _enabled_by_us = False
