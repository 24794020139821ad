"""agenta-notebook: trace LLM apps in Jupyter, with cost and tokens subtotalled at every node.

>>> import agenta_notebook as an
>>> with an.trace("answer") as t:
...     with an.span("llm", type="llm"):
...         an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=5)
>>> t.totals.total_tokens
15
"""

from __future__ import annotations

__version__ = "0.1.0"

from .collector import get_collector, last_trace, set_retention, trace
from .frame import spans_dataframe
from .integrations.instrument import instrument, uninstrument
from .integrations.openai import instrument_openai, uninstrument_openai
from .otlp import export_to, stop_export
from .persist import TraceFileError, load, load_all
from .pricing import calculate_cost, clear_prices, set_prices
from .spans import record_usage, span
from .tree import Figures, SpanNode, SpanRecord, Trace, TraceSummary, build_tree
from .usage import Usage, read_usage


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext agenta_notebook``: register ``%%agenta_trace`` (see `agenta_notebook.magic`)."""
    from .magic import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext agenta_notebook``: remove the magic and its hooks."""
    from .magic import unload

    unload(ipython)


__all__ = [
    "Figures",
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
    "export_to",
    "get_collector",
    "instrument",
    "instrument_openai",
    "last_trace",
    "load",
    "load_all",
    "read_usage",
    "record_usage",
    "set_prices",
    "set_retention",
    "span",
    "spans_dataframe",
    "stop_export",
    "trace",
    "uninstrument",
    "uninstrument_openai",
]
