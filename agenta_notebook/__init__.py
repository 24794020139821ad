"""agenta-notebook: trace LLM apps in Jupyter, with cost and tokens subtotalled at every node.

>>> import agenta_notebook as an
>>> with an.trace("answer") as t:
...     with an.span("llm", type="llm"):
...         an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=5)
>>> t.totals.total_tokens
15
"""

from __future__ import annotations

import os
from typing import Any

from agenta_notebook.budget import BudgetExceeded
from agenta_notebook.core.rollup import Figures, SpanNode, SpanRecord, TraceSummary, build_tree
from agenta_notebook.core.usage import Usage, read_usage
from agenta_notebook.integrations.instrument import instrument, uninstrument
from agenta_notebook.integrations.openai import instrument_openai, uninstrument_openai
from agenta_notebook.io.compare import Comparison, compare
from agenta_notebook.io.frame import spans_dataframe
from agenta_notebook.io.frame import trace_totals_dataframe as traces_dataframe
from agenta_notebook.io.ledger import spend_dataframe
from agenta_notebook.io.otlp import export_to, stop_export
from agenta_notebook.io.persist import TraceFileError, load, load_all
from agenta_notebook.live import SHELLS, Trace
from agenta_notebook.runtime import (
    RUNTIME,
    Runtime,
    calculate_cost,
    clear_prices,
    get_collector,
    last_trace,
    set_capture,
    set_ledger,
    set_prices,
    set_retention,
    trace,
)
from agenta_notebook.spans import record_usage, span
from agenta_notebook.version import __version__


# The live trace sits below its views, so the package plugs them in. The notebook display
# is imported on first use: IPython's display machinery and ipywidgets are not needed by a
# script that only traces.
def _trace_mimebundle(trace: Trace) -> dict[str, Any]:
    from agenta_notebook.views.display import trace_mimebundle

    return trace_mimebundle(trace)


def _save_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    from agenta_notebook.io.persist import save_trace

    save_trace(trace, path)


def _trace_dataframe(trace: Trace) -> Any:
    from agenta_notebook.io.frame import trace_dataframe

    return trace_dataframe(trace)


def _by_model_dataframe(trace: Trace) -> Any:
    from agenta_notebook.io.frame import by_model_dataframe

    return by_model_dataframe(trace)


SHELLS.dataframe = _trace_dataframe
SHELLS.by_model = _by_model_dataframe
SHELLS.save = _save_trace
SHELLS.mimebundle = _trace_mimebundle
SHELLS.user_prices = RUNTIME.prices.current


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext agenta_notebook``: register ``%%agenta_trace`` (see `ipython/magic.py`)."""
    from agenta_notebook.ipython.magic import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext agenta_notebook``: remove the magic and its hooks."""
    from agenta_notebook.ipython.magic import unload

    unload(ipython)


__all__ = [
    "RUNTIME",
    "BudgetExceeded",
    "Comparison",
    "Figures",
    "Runtime",
    "SpanNode",
    "SpanRecord",
    "Trace",
    "TraceFileError",
    "TraceSummary",
    "Usage",
    "__version__",
    "build_tree",
    "calculate_cost",
    "clear_prices",
    "compare",
    "export_to",
    "get_collector",
    "instrument",
    "instrument_openai",
    "last_trace",
    "load",
    "load_all",
    "read_usage",
    "record_usage",
    "set_capture",
    "set_ledger",
    "set_prices",
    "set_retention",
    "span",
    "spans_dataframe",
    "spend_dataframe",
    "stop_export",
    "trace",
    "traces_dataframe",
    "uninstrument",
    "uninstrument_openai",
]
