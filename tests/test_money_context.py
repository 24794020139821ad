"""Money is computed in our own decimal context, whatever the notebook did to its own.

A notebook may set `decimal.getcontext().prec = 3` or trap `Inexact`; costs, totals, the
DataFrame and the HTML must come out exactly as under Python's default context. Each
test sets the hostile context itself and restores the caller's afterwards.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest

import agenta_notebook as an
from agenta_notebook.core import pricing
from agenta_notebook.live import Trace
from agenta_notebook.views.html import format_cost, static_html, text_summary

pytestmark = pytest.mark.usefixtures("fresh_runtime")

#: A price with many digits: 4_300_007 tokens at it cost 4.777785...  (not 4.78).
PRICE = "1.11111111"


@contextmanager
def hostile_context(trap: bool) -> Iterator[None]:
    """3 significant digits (and with `trap`, `Inexact` and `Rounded` trapped), in this
    thread, restored after."""
    saved = decimal.getcontext()
    hostile = saved.copy()
    hostile.prec = 3
    hostile.traps[decimal.Inexact] = trap
    hostile.traps[decimal.Rounded] = trap
    decimal.setcontext(hostile)
    try:
        yield
    finally:
        decimal.setcontext(saved)


def forget_table_measurements() -> None:
    """Empty the caches of genai-prices' answers, so they are measured again now."""
    for cached in (pricing._table_match, pricing._linear_price, pricing._table_cost):
        cached.cache_clear()


def make_trace() -> Trace:
    with an.trace("money") as result:
        with an.span("override", type="llm"):
            an.record_usage(model="my-model", input_tokens=4_300_007, output_tokens=3)
        with an.span("table", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=123_457, output_tokens=9_871)
        with an.span("tiered", type="llm"):
            an.record_usage(model="gemini-1.5-pro", input_tokens=250_001, output_tokens=77)
        with an.span("reported", type="llm"):
            an.record_usage(model="x", input_tokens=1, cost="1.234567890123456789012345")
    return result


def figures(trace: Trace) -> dict[str, object]:
    """Everything money-related the user can see of `trace`, computed now."""
    frame = trace.to_dataframe()
    return {
        "costs": [node.own.cost for node in trace.nodes],
        "subtotals": [node.subtotal.cost for node in trace.nodes],
        "total": trace.totals.cost,
        "by_model": [(row.model, row.cost) for row in trace.tree.by_model()],
        "frame": list(frame["cost"]),
        "html": static_html(trace),
        "text": text_summary(trace),
        "calculate": an.calculate_cost("my-model", {"input_tokens": 4_300_007}),
        "table": an.calculate_cost("gpt-4o", {"input_tokens": 123_457, "output_tokens": 1}),
        "format": format_cost(Decimal("0.0000123456789")),
    }


@pytest.mark.parametrize("trap", [False, True], ids=["prec=3", "prec=3 and traps"])
def test_costs_are_the_same_under_a_hostile_decimal_context(trap: bool) -> None:
    an.set_prices("my-model", input=PRICE, output="2.22222222")
    trace = make_trace()
    forget_table_measurements()
    with hostile_context(trap):
        hostile = figures(trace)  # the tree is built now, in the hostile context
    an.set_prices("my-model", input=PRICE, output="2.22222222")  # rebuilt on next read
    forget_table_measurements()
    default = figures(trace)
    assert hostile == default
    # exact, by hand: 4_300_007 * 1.11111111 + 3 * 2.22222222, per million
    expected = (4_300_007 * Decimal(PRICE) + 3 * Decimal("2.22222222")) / 1_000_000
    assert trace.nodes[1].own.cost == expected
    assert default["calculate"] == 4_300_007 * Decimal(PRICE) / 1_000_000
    # the reported cost is summed with all its 25 digits
    assert trace.nodes[4].own.cost == Decimal("1.234567890123456789012345")
    total = trace.totals.cost
    assert total is not None
    assert total == sum((node.own.cost or Decimal(0) for node in trace.nodes[1:]), Decimal(0))
    assert all(node.own.cost is not None for node in trace.nodes[1:])  # none turned unpriced
