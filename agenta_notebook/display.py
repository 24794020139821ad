"""Showing a trace in a notebook output: the contract between the magic and the views.

`show_trace(trace)` displays a live view of `trace` in the current output and returns a
`TraceDisplay`; the magic calls `refresh()` as spans arrive and `finish()` when the cell
ends. (Placeholder rendering until the widget lands: text only.)
"""

from __future__ import annotations

from typing import Any

from .tree import Trace


class TraceDisplay:
    """One displayed trace: refreshed as spans arrive, settled when the cell ends."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._handle: Any = None

    def show(self) -> None:
        from IPython.display import display

        self._handle = display(self._bundle(), raw=True, display_id=True)

    def refresh(self) -> None:
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def finish(self) -> None:
        self.refresh()

    def close(self) -> None:
        self._handle = None

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": repr(self.trace)}


def show_trace(trace: Trace) -> TraceDisplay:
    """Display `trace` in the current output and return its display."""
    shown = TraceDisplay(trace)
    shown.show()
    return shown
