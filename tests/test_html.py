"""The static renderings: `text/html` twin and `text/plain` summary (agenta_notebook.views.html)."""

from __future__ import annotations

import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from conftest import RecordFactory

from agenta_notebook.core.rollup import SpanEvent, SpanRecord
from agenta_notebook.live import Trace
from agenta_notebook.views.details import details_html
from agenta_notebook.views.html import (
    STATIC_MAX_NODES,
    format_cost,
    format_money,
    format_tokens,
    static_html,
    text_summary,
)

PAYLOADS = (
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "</details></div><iframe src=javascript:alert(4)>",
)


class Elements(HTMLParser):
    """Every element and attribute of an HTML string, and the text."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(name for name, _value in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(markup: str) -> Elements:
    """No element or attribute that could run code; returns the parse."""
    parsed = Elements(markup)
    assert not {"script", "img", "svg", "iframe"} & set(parsed.tags), parsed.tags
    assert not [name for name in parsed.attributes if name.startswith("on")]
    return parsed


def agent_trace(records: RecordFactory) -> Trace:
    root = records.add("root", type="workflow")
    agent = records.add("agent", root, type="agent")
    records.add(
        "plan",
        agent,
        type="llm",
        **{
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        },
    )
    records.add(
        "local",
        agent,
        type="llm",
        **{
            "gen_ai.request.model": "my-local-llama",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 10,
        },
    )
    records.add("tool", agent, type="tool", status="ERROR")
    return Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)


def test_format_never_shows_unknown_as_zero() -> None:
    assert format_cost(None) == "—"
    assert format_money(None, 0) == "—"
    assert format_money(None, 3) == "3 unpriced"
    assert format_money(Decimal("0.0123"), 2) == "$0.0123 + 2 unpriced"
    assert format_cost(Decimal(0)) == "$0"  # a real zero stays a zero
    assert format_tokens(None) == "—"
    assert format_tokens(0) == "0"


def test_static_html_rows_show_the_core_subtotals(records: RecordFactory) -> None:
    trace = agent_trace(records)
    markup = static_html(trace)
    parsed = assert_inert(markup)
    text = "".join(parsed.text)
    for node in trace.nodes:
        subtotal = node.subtotal
        # each row: name, then its subtotal tokens and cost
        pattern = (
            re.escape(node.name)
            + r".*?"
            + re.escape(format_tokens(subtotal.total_tokens))
            + r" tok"
            + re.escape(format_money(subtotal.cost, subtotal.unpriced_calls))
        )
        assert re.search(pattern, text), node.name
    totals = trace.summary().totals
    assert totals.unpriced_calls == 1 and totals.cost is not None
    assert format_money(totals.cost, totals.unpriced_calls) in text
    assert "openai/gpt-4o-mini" in text or "gpt-4o-mini" in text
    assert parsed.tags.count("details") == sum(1 for node in trace.nodes if node.children)
    assert "✖ error" in text


def test_text_summary_is_deterministic(records: RecordFactory) -> None:
    first = agent_trace(records)
    again = RecordFactory(trace_id=0xDEF)
    again._clock = 987_654_321  # other ids, other times, same spans
    second = agent_trace(again)
    assert text_summary(first) == text_summary(second)
    summary = text_summary(first)
    totals = first.totals
    assert f"tokens {format_tokens(totals.total_tokens)}" in summary
    assert format_money(totals.cost, totals.unpriced_calls) in summary
    assert "1 error" in summary
    assert "my-local-llama: 1 call, 1,010 tokens, 1 unpriced" in summary
    assert not re.search(r"[0-9a-f]{16}", summary)
    assert " ms" not in summary and " s " not in summary


@pytest.mark.parametrize("payload", PAYLOADS)
def test_everything_from_spans_is_escaped(payload: str) -> None:
    exception = SpanEvent(
        "exception",
        7,
        {
            "exception.type": payload,
            "exception.message": payload,
            "exception.stacktrace": f"Traceback:\n  {payload}",
        },
    )
    records = [
        SpanRecord(1, 1, None, payload, 0, 100, attributes={"ag.type.node": payload}),
        SpanRecord(
            1,
            2,
            1,
            payload,
            1,
            50,
            status="ERROR",
            status_message=payload,
            attributes={
                "ag.type.node": "llm",
                "gen_ai.request.model": payload,
                "gen_ai.usage.input_tokens": payload,
                payload: payload,
            },
            events=(exception, SpanEvent(payload, 9, {payload: payload})),
        ),
    ]
    trace = Trace(1, payload, root_span_id=1, records=records)
    static = static_html(trace)
    details = details_html(trace.find(payload).children[0])
    for markup in (static, details):
        parsed = assert_inert(markup)
        assert payload in "".join(parsed.text)  # shown as text
        assert payload not in markup  # never as markup
    assert "Traceback:" in details
    assert text_summary(trace).startswith(f"Trace {payload!r}")


def test_static_html_is_capped(records: RecordFactory) -> None:
    root = records.add("root")
    for group in range(30):
        parent = records.add(f"group {group}", root)
        for index in range(200):
            records.add(
                f"call {group}.{index}", parent, type="llm", **{"gen_ai.usage.input_tokens": 1}
            )
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    markup = static_html(trace)
    assert len(markup.encode()) < 1_000_000
    parsed = assert_inert(markup)
    text = "".join(parsed.text)
    written = len(re.findall(r"\d tok", text))
    assert written == STATIC_MAX_NODES
    left_out = sum(int(n.replace(",", "")) for n in re.findall(r"… ([\d,]+) more spans", text))
    assert written + left_out == len(trace.nodes)


def test_static_html_stays_small_with_huge_strings() -> None:
    huge = "x" * 1_000_000
    records = [SpanRecord(1, 1, None, huge, 0, 10)] + [
        SpanRecord(1, i, 1, huge, i, i + 1, attributes={"k": huge}) for i in range(2, 600)
    ]
    trace = Trace(1, huge, root_span_id=1, records=records)
    assert len(static_html(trace).encode()) < 1_000_000
    assert len(details_html(trace.nodes[1])) < 20_000
