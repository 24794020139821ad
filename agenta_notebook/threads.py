"""Carry the current span into threads, so work in a thread lands under the right parent.

`asyncio` tasks copy the context (and so the current span) on their own; threads do
not. When the IPython extension loads, it calls `enable_thread_propagation()`: from then
on `threading.Thread`, `threading.Timer` and `concurrent.futures.ThreadPoolExecutor.submit`
(and so `map`) run their work in the OpenTelemetry context that was current when the
thread was started or the work submitted, exactly as OpenTelemetry's own
``ThreadingInstrumentor`` does. This module does it itself, so that the package does not
depend on ``opentelemetry-instrumentation-threading``, which pins the whole
``opentelemetry-instrumentation`` family to its own version and so makes the package
impossible to install beside libraries that pin that family differently.

Only the OpenTelemetry context travels (the current span and baggage), as with the
official instrumentor; other context variables (a `decimal` context, say) do not.

Opting out: set the environment variable ``AGENTA_NOTEBOOK_THREADS=0`` (or ``false``,
``no``, ``off``) before loading the extension, or call `disable_thread_propagation()`.
If the official ``ThreadingInstrumentor`` is already active, it is left as it is and
nothing is added on top of it.

A `threading.Thread` subclass that overrides `run` does not get the context (the
propagation wraps `Thread.run`, as the official instrumentor does); pass `target=`
instead, or copy it yourself with `contextvars.copy_context().run`.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, Final, TypeVar

from opentelemetry import context as otel_context

from agenta_notebook.runtime import RUNTIME, ThreadPropagation

#: Environment variable that turns thread propagation off when set to 0/false/no/off.
ENV_VAR: Final = "AGENTA_NOTEBOOK_THREADS"
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: Attribute of a started thread holding the context it was started in.
_CONTEXT_ATTR: Final = "_agenta_notebook_context"
#: Marks our wrappers, so they are installed once per class even across module reloads.
_WRAPPER_MARK: Final = "_agenta_notebook_propagates"

R = TypeVar("R")

# Whether propagation is on is the runtime's (`RUNTIME.threads`). The wrappers are
# process-wide: installed once and never removed (removing a wrapper that someone else
# wrapped again would remove theirs too); turning propagation off makes them pass through.


def propagation_wanted() -> bool:
    """False when the user opted out with ``AGENTA_NOTEBOOK_THREADS=0``."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _FALSE


def _official_instrumentor_active() -> bool:
    """True when OpenTelemetry's own ThreadingInstrumentor is instrumenting threads."""
    module = sys.modules.get("opentelemetry.instrumentation.threading")
    if module is None:  # never imported, so never turned on
        return False
    try:
        return bool(module.ThreadingInstrumentor().is_instrumented_by_opentelemetry)
    except AttributeError:  # a version without these: not the instrumentor we know
        return False


def is_propagating() -> bool:
    """True when threads started now inherit the current span (by us or by anyone)."""
    return RUNTIME.threads.active or _official_instrumentor_active()


def _wrap_start(original: Callable[..., None], state: ThreadPropagation) -> Callable[..., None]:
    @functools.wraps(original)
    def start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        if state.active:
            setattr(self, _CONTEXT_ATTR, otel_context.get_current())
        original(self, *args, **kwargs)

    setattr(start, _WRAPPER_MARK, True)
    return start


def _wrap_run(original: Callable[..., None], state: ThreadPropagation) -> Callable[..., None]:
    @functools.wraps(original)
    def run(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        captured = self.__dict__.get(_CONTEXT_ATTR)
        if captured is None:
            original(self, *args, **kwargs)
            return
        token = otel_context.attach(captured)
        try:
            original(self, *args, **kwargs)
        finally:
            otel_context.detach(token)

    setattr(run, _WRAPPER_MARK, True)
    return run


def _in_context(captured: otel_context.Context, fn: Callable[..., R]) -> Callable[..., R]:
    def in_context(*args: Any, **kwargs: Any) -> R:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        token = otel_context.attach(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return in_context


def _wrap_submit(
    original: Callable[..., futures.Future[Any]], state: ThreadPropagation
) -> Callable[..., Any]:
    @functools.wraps(original)
    def submit(
        self: futures.ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> futures.Future[Any]:
        if state.active:
            fn = _in_context(otel_context.get_current(), fn)
        return original(self, fn, *args, **kwargs)

    setattr(submit, _WRAPPER_MARK, True)
    return submit


def _install(
    owner: type,
    name: str,
    wrap: Callable[[Any, ThreadPropagation], Any],
    state: ThreadPropagation,
) -> None:
    current = owner.__dict__.get(name)
    if current is None or getattr(current, _WRAPPER_MARK, False):
        return
    setattr(owner, name, wrap(current, state))


def _install_wrappers(state: ThreadPropagation) -> None:
    _install(threading.Thread, "start", _wrap_start, state)  # threading.Timer inherits it
    _install(threading.Thread, "run", _wrap_run, state)
    _install(threading.Timer, "run", _wrap_run, state)
    _install(futures.ThreadPoolExecutor, "submit", _wrap_submit, state)


def enable_thread_propagation() -> bool:
    """Propagate the context into threads unless the user opted out; True if it is on.

    >>> enable_thread_propagation()  # doctest: +SKIP
    True
    """
    if not propagation_wanted():
        return False
    state = RUNTIME.threads
    with state.lock:
        if _official_instrumentor_active():
            return True
        _install_wrappers(state)
        state.active = True
        return True


def disable_thread_propagation() -> None:
    """Undo `enable_thread_propagation` (an official instrumentor is left as it is)."""
    state = RUNTIME.threads
    with state.lock:
        state.active = False
