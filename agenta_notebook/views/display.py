"""Showing a trace in a notebook output: the contract between the magic and the views.

`show_trace(trace)` displays a live view of `trace` in the current output and returns a
`TraceDisplay`, which follows the spans as they end (a trace listener: from any thread,
as often as they come) and redraws itself at most every `MIN_INTERVAL`, never leaving
the latest state undrawn; the magic calls `finish()` when the cell ends. One output
bundle carries the widget view, its static `text/html` twin (for GitHub and nbconvert)
and a short deterministic `text/plain` summary (for nbval).

Views of a trace that the collector drops (retention) are closed, so a long session does
not pile up widget models; of traces it never kept (`an.load`), only the newest
`MAX_UNKEPT_VIEWS` (runtime) stay open. A closed view's output shows its static HTML.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from agenta_notebook import forksafe
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME

#: Redraw a live view at most this often (seconds); slower for big trees (see `refresh`).
MIN_INTERVAL: Final = 0.25
#: After a redraw that took `t` seconds, the next waits at least this many times `t`.
SLOW_REDRAW_SPACING: Final = 8


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


# The open views are the runtime's (`RUNTIME.views`): it closes those of a trace the
# collector drops, and redraws them all when the user's prices change (rule 15).
# Views of a trace the collector does not keep (`an.load`) are bounded in number instead.
def _register(trace: Trace, view: TraceDisplay) -> bool:
    """Register `view`; True when the collector keeps `trace`."""
    collector = RUNTIME.tracing.collector
    kept = collector is not None and collector.find(trace.trace_id) is trace
    RUNTIME.views.register(trace, view, kept=kept)
    return kept


def _unregister(trace: Trace, view: TraceDisplay) -> None:
    RUNTIME.views.unregister(trace, view)


def open_view_count() -> int:
    """How many trace views are open in this process (for leak checks)."""
    return RUNTIME.views.count()


def static_bundle(trace: Trace) -> dict[str, Any]:
    """The `text/plain` and `text/html` renderings of `trace`."""
    from agenta_notebook.views.html import static_html, text_summary

    return {"text/plain": text_summary(trace), "text/html": static_html(trace)}


class TraceDisplay:
    """One displayed trace: refreshed as spans arrive, settled when the cell ends.

    Outside a kernel (plain IPython, a script) there is no widget: only the static
    renderings are displayed.
    """

    def __init__(self, trace: Trace, *, widget: bool | None = None) -> None:
        self.trace = trace
        self.view: Any = None
        self._handle: Any = None
        self._lock = forksafe.new_lock()
        self._timer: threading.Timer | None = None
        # The first live redraw waits a little: a cell that ends quickly is drawn twice
        # only (shown, then settled), not again in between from a timer thread.
        self._next_allowed = time.monotonic() + MIN_INTERVAL
        self._finished = False
        #: the tree and static renderings the output shows (to skip unchanged updates)
        self._static_for: Any = None
        self._static_sent: dict[str, Any] | None = None
        self._closed = False
        self.redraws = 0
        self._shown: dict[str, Any] | None = None
        #: whether the collector keeps the trace (else the view may be closed for newer ones)
        self._kept = True
        if widget is None:
            widget = _in_kernel()
        if widget:
            from agenta_notebook.views.widget import TraceView

            self.view = TraceView(trace)
            self._kept = _register(trace, self)
        trace.add_listener(self._on_span)

    # -- output -------------------------------------------------------------------------
    def bundle(self) -> dict[str, Any]:
        """The whole output bundle: widget view (if any), `text/html`, `text/plain`."""
        tree = self.trace.tree
        if self._static_sent is None or self._static_for is not tree:
            self._static_for, self._static_sent = tree, static_bundle(self.trace)
        data = dict(self._static_sent)
        if self.view is not None and not self.view.closed:
            data.update(self.view.view_bundle())
        return data

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.bundle()

    def show(self) -> None:
        """Display the trace in the current output."""
        from IPython.display import display

        data = self.bundle()
        self._handle = display(data, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        self._shown = data

    # -- live ---------------------------------------------------------------------------
    def _on_span(self, _trace: Trace) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Schedule a redraw: cheap, thread-safe, coalesced to a few redraws a second."""
        if self._timer is not None:
            # A redraw is scheduled and has not started (it clears `_timer` first, then
            # reads the trace): it will draw this span too. Read without the lock, as
            # this runs once per span that ends, on the traced code's thread.
            return
        with self._lock:
            if self._closed or self._timer is not None:
                return
            delay = max(0.0, self._next_allowed - time.monotonic())
            timer = threading.Timer(delay, self._scheduled_redraw)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _scheduled_redraw(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            self._next_allowed = time.monotonic() + MIN_INTERVAL
        started = time.monotonic()
        try:
            self._redraw(settle=self._finished)
        except Exception:  # a failing view must never break the traced code
            internal_error("redrawing a trace view")
        spent = time.monotonic() - started
        with self._lock:
            # A redraw that takes long (huge live trace) spaces the next ones out, so that
            # the view takes at most about a ninth of the interpreter from the cell.
            self._next_allowed = time.monotonic() + max(MIN_INTERVAL, SLOW_REDRAW_SPACING * spent)

    def _redraw(self, *, settle: bool) -> None:
        if self.view is not None:
            self.view.update()
        self.redraws += 1
        if settle and self._handle is not None:
            data = self.bundle()
            if data != self._shown:  # the same output again would be one more message
                self._handle.update(data, raw=True)
                self._shown = data

    def finish(self) -> None:
        """Settle to the final state now; spans that end later refresh it again."""
        with self._lock:
            if self._closed:
                return
            self._finished = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._redraw(settle=True)

    def close(self) -> None:
        """Close every widget of this display and stop listening to the trace."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.trace.remove_listener(self._on_span)
        if self.view is not None:
            self.view.close()
            _unregister(self.trace, self)
            if self._handle is not None and not self._kept:
                # Closed for newer views: the output keeps its static renderings.
                try:
                    self._handle.update(self.bundle(), raw=True)
                except Exception:
                    internal_error("showing a closed trace view as static HTML")

    @property
    def closed(self) -> bool:
        return self._closed


def show_trace(trace: Trace) -> TraceDisplay:
    """Display `trace` in the current output and return its display.

    The magic does this for each traced cell; by hand::

        with agenta_notebook.trace("answer") as t:
            shown = show_trace(t)
            ...
        shown.finish()
    """
    shown = TraceDisplay(trace)
    shown.show()
    return shown


def trace_mimebundle(trace: Trace) -> dict[str, Any]:
    """What `Trace._repr_mimebundle_` returns: a finished display's bundle."""
    shown = TraceDisplay(trace)
    # Settled already: spans that end later redraw the view and no output handle exists.
    # The view closes when retention drops the trace.
    shown._finished = True
    if shown.view is None:
        shown.close()
    return shown.bundle()
