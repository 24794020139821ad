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
from .pricing import calculate_cost, clear_prices, set_prices
from .spans import record_usage, span
from .tree import Figures, SpanNode, SpanRecord, Trace, TraceSummary, build_tree
from .usage import Usage, read_usage

__all__ = [
    "Figures",
    "SpanNode",
    "SpanRecord",
    "Trace",
    "TraceSummary",
    "Usage",
    "__version__",
    "build_tree",
    "calculate_cost",
    "clear_prices",
    "get_collector",
    "last_trace",
    "read_usage",
    "record_usage",
    "set_prices",
    "set_retention",
    "span",
    "spans_dataframe",
    "trace",
]
