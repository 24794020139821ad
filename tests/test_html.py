"""The static renderings: `text/html` twin and `text/plain` summary (agenta_notebook.views.html)."""

from __future__ import annotations

import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from conftest import RecordFactory

from agenta_notebook.core.fields import Figures
from agenta_notebook.core.rollup import SpanEvent, SpanRecord
from agenta_notebook.core.usage import usage_attributes
from agenta_notebook.live import Trace
from agenta_notebook.views import html as views_html
from agenta_notebook.views.details import details_html
from agenta_notebook.views.html import (
    MAX_AMOUNT_CHARS,
    MAX_PLACES,
    STATIC_MAX_NODES,
    cost_share,
    costliest,
    costliest_html,
    format_amount,
    format_cost,
    format_money,
    format_money_in,
    format_share,
    format_tokens,
    label,
    row_figures_html,
    static_html,
    text_summary,
    view_scale,
    waterfall_bar,
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


def shown_cost(subtotal: Figures, places: int) -> str:
    if subtotal.cost is None and subtotal.unpriced_calls:
        return "unpriced"
    return format_amount(subtotal.cost, places)


def test_static_html_rows_show_the_core_subtotals(records: RecordFactory) -> None:
    trace = agent_trace(records)
    places = view_scale(trace.tree.root, trace.nodes).places
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
            + re.escape(shown_cost(subtotal, places))
        )
        assert re.search(pattern, text), node.name
    totals = trace.summary().totals
    assert totals.unpriced_calls == 1 and totals.cost is not None
    assert format_money_in(totals.cost, totals.unpriced_calls, places) in text
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
    written = len(re.findall(r'class="agn-wf" title', markup))
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


# -- the waterfall and money at a glance ---------------------------------------------------

MS = 1_000_000


def call(span_id: int, parent: int, name: str, start_ms: int, end_ms: int | None, **more: object):
    """A model call (gpt-4o, priced) from `start_ms` to `end_ms` (None: running)."""
    attributes: dict[str, object] = {
        "ag.type.node": "llm",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": more.pop("tokens_in", 1200),
        "gen_ai.usage.output_tokens": more.pop("tokens_out", 300),
    }
    end = None if end_ms is None else end_ms * MS
    return SpanRecord(1, span_id, parent, name, start_ms * MS, end, attributes=attributes, **more)  # type: ignore[arg-type]


def gather_trace(running: bool = False) -> Trace:
    """root 0..1000 ms; "fan out" 100..600 ms with three overlapping calls (a gather),
    a failed tool, and a last call that runs 700 ms.. (still running when `running`)."""
    records = [
        SpanRecord(1, 1, None, "root", 0, None if running else 1000 * MS),
        SpanRecord(1, 2, 1, "fan out", 100 * MS, 600 * MS),
        call(3, 2, "chat", 100, 500),
        call(4, 2, "chat", 110, 590, tokens_in=40, tokens_out=5),
        call(5, 2, "chat", 120, 400),
        SpanRecord(1, 6, 1, "tool", 600 * MS, 650 * MS, status="ERROR"),
        call(7, 1, "last", 700, None if running else 900),
        SpanRecord(1, 8, 7, "late child", 800 * MS, 850 * MS),
    ]
    return Trace(1, "root", root_span_id=1, records=records)


def test_waterfall_bars_sit_at_their_offsets_and_overlap() -> None:
    trace = gather_trace()
    scale = view_scale(trace.tree.root, trace.nodes)
    assert (scale.start_ns, scale.end_ns, scale.running) == (0, 1000 * MS, False)
    bars = {node.span_id: waterfall_bar(node, scale) for node in trace.nodes}
    assert (bars[1].left, bars[1].width) == (0, 100)
    assert (bars[3].left, bars[3].width) == pytest.approx((10, 40))
    assert (bars[4].left, bars[4].width) == pytest.approx((11, 48))
    # The gather's calls overlap: each starts before the others end.
    for one, other in ((3, 4), (4, 5), (3, 5)):
        assert bars[one].left < bars[other].left + bars[other].width
        assert bars[other].left < bars[one].left + bars[one].width
    assert bars[6].error and not bars[3].error and not bars[3].running
    assert bars[3].title == "starts at +100 ms · lasts 400 ms"
    cell = row_figures_html(trace.find("tool"), scale)
    assert 'class="agn-bar agn-bar-err" style="left:60.00%;width:5.00%"' in cell


def test_waterfall_running_spans_reach_the_traces_current_end() -> None:
    trace = gather_trace(running=True)
    scale = view_scale(trace.tree.root, trace.nodes)
    # The latest time seen is the late child's end (850 ms): the running spans end there.
    assert scale.running and scale.end_ns == 850 * MS
    last = waterfall_bar(trace.find("last"), scale)
    assert last.running and last.left + last.width == pytest.approx(100)
    assert last.title.endswith("running")
    root = waterfall_bar(trace.tree.root, scale)
    assert (root.left, root.width, root.running) == (0, 100, True)
    assert "agn-bar agn-bar-run" in row_figures_html(trace.find("last"), scale)


def test_waterfall_against_the_parent() -> None:
    trace = gather_trace()
    scale = view_scale(trace.tree.root, trace.nodes)
    chat = next(node for node in trace.nodes if node.span_id == 4)
    bar = waterfall_bar(chat, scale, "parent")
    # fan out is 100..600 ms; this call 110..590 ms
    assert (bar.left, bar.width) == pytest.approx((2, 96))
    assert "+10 ms into its parent" in bar.title
    assert 'style="left:2.00%;width:96.00%"' in row_figures_html(chat, scale, "parent")
    child = waterfall_bar(trace.find("late child"), scale, "parent")
    assert (child.left, child.width) == pytest.approx((50, 25))
    assert waterfall_bar(trace.tree.root, scale, "parent").width == 100


def test_costs_share_one_unit_and_line_up() -> None:
    trace = gather_trace()
    scale = view_scale(trace.tree.root, trace.nodes)
    costs = [node.own.cost for node in trace.nodes if node.own.cost]
    smallest = min(c for c in costs if c is not None)
    # two significant figures of the smallest cost, and every row the same decimals
    assert scale.places == -smallest.adjusted() + 1
    shown = [format_amount(node.subtotal.cost, scale.places) for node in trace.nodes]
    decimals = {len(text.split(".")[1]) for text in shown if text != "—"}
    assert decimals == {scale.places}
    assert format_amount(None, 6) == "—"
    assert [format_amount(Decimal(c), 6) for c in ("0.000695", "0.0000486")] == [
        "$0.000695",
        "$0.000049",
    ]
    assert len(format_amount(Decimal("0.000695"), 6)) == len(format_amount(Decimal("0.0000486"), 6))
    assert format_amount(Decimal(0), 4) == "$0.0000"


def test_unpriced_is_not_zero_in_a_row() -> None:
    records = [
        SpanRecord(1, 1, None, "root", 0, 10),
        SpanRecord(
            1,
            2,
            1,
            "local",
            1,
            5,
            attributes={
                "ag.type.node": "llm",
                "gen_ai.request.model": "my-local-llama",
                "gen_ai.usage.input_tokens": 10,
            },
        ),
        SpanRecord(1, 3, 1, "tool", 6, 8, attributes={"ag.type.node": "tool"}),
    ]
    trace = Trace(1, "root", root_span_id=1, records=records)
    scale = view_scale(trace.tree.root, trace.nodes)
    local = row_figures_html(trace.find("local"), scale)
    assert ">unpriced<" in local and "$0" not in local
    tool = row_figures_html(trace.find("tool"), scale)
    assert 'agn-cost">—<' in tool


def test_each_row_shows_its_share_of_the_cost() -> None:
    trace = gather_trace()
    scale = view_scale(trace.tree.root, trace.nodes)
    total = trace.tree.root.subtotal.cost
    assert total is not None and scale.total_cost == total
    fan_out = trace.find("fan out")
    share = cost_share(fan_out, scale)
    assert fan_out.subtotal.cost is not None
    assert share == pytest.approx(float(fan_out.subtotal.cost / total))
    assert 0 < share < 1
    assert cost_share(trace.tree.root, scale) == 1.0
    assert cost_share(trace.find("tool"), scale) is None
    cell = row_figures_html(fan_out, scale)
    assert f">{format_share(share)}<" in cell and f"width:{100 * share:.0f}%" in cell
    assert [format_share(s) for s in (None, 0.001, 0.5)] == ["", "<1%", "50%"]


def test_model_calls_show_their_model_and_tokens_inline() -> None:
    trace = gather_trace()
    chats = [node for node in trace.nodes if node.name == "chat"]
    assert [label(node) for node in chats] == [
        "chat · llm · gpt-4o · 1,200→300",
        "chat · llm · gpt-4o · 40→5",
        "chat · llm · gpt-4o · 1,200→300",
    ]
    assert label(trace.find("fan out")) == "fan out"
    assert "gpt-4o · 40→5" in static_html(trace)


def test_costliest_spans() -> None:
    trace = gather_trace()
    top = costliest(trace.nodes)
    own = [node.own.cost for node in top]
    assert len(top) == 4 and own == sorted(own, reverse=True)  # type: ignore[type-var]
    assert top[-1].span_id == 4  # the small call
    assert all(node.own.cost for node in top)
    scale = view_scale(trace.tree.root, trace.nodes)
    listed = costliest_html(costliest(trace.nodes), scale)
    assert listed.count("<li>") == 4 and "costliest spans" in listed
    assert format_amount(top[0].own.cost, scale.places) in listed
    text = "".join(assert_inert(static_html(trace)).text)
    assert "costliest spans" in text
    many = Trace(
        1,
        "root",
        root_span_id=1,
        records=[SpanRecord(1, 1, None, "root", 0, 100 * MS)]
        + [call(i, 1, f"c{i}", i, i + 1, tokens_in=i * 100) for i in range(2, 12)],
    )
    assert [node.name for node in costliest(many.nodes)] == ["c11", "c10", "c9", "c8", "c7"]


def test_a_tiny_cost_does_not_widen_every_row(records: RecordFactory) -> None:
    """One span costing $1e-12 does not give every row twelve decimals."""
    root = records.add("root")
    records.add("big", root, type="llm", **usage_attributes(model="x", cost=12.34))
    records.add("tiny", root, type="llm", **usage_attributes(model="x", cost=1e-12))
    trace = Trace(records.trace_id, "tiny", root_span_id=root.span_id, records=records.all)
    scale = view_scale(trace.tree.root, trace.nodes)
    assert scale.places == MAX_PLACES == 8
    assert format_amount(Decimal("12.34"), scale.places) == "$12.34000000"
    assert format_amount(Decimal("1e-12"), scale.places) == "<$0.00000001"


def test_the_time_axis_reaches_spans_that_end_after_the_root() -> None:
    trace = Trace(
        1,
        "late",
        root_span_id=1,
        records=[
            SpanRecord(1, 1, None, "root", 0, 100),
            SpanRecord(1, 2, 1, "background", 50, 400),
        ],
    )
    tree = trace.tree
    scale = view_scale(tree.root, tree.nodes)
    assert (scale.start_ns, scale.end_ns) == (0, 400)


def test_row_figures_fit_their_columns_whatever_the_totals(records: RecordFactory) -> None:
    """A $1,234 trace with sub-cent spans, and 123 million tokens: the cost keeps to the
    column's width (fewer decimals) and the tokens are shortened, exact in the tooltip."""
    root = records.add("root")
    records.add("big", root, type="llm", **usage_attributes(model="x", cost=1234.5))
    records.add(
        "small",
        root,
        type="llm",
        **usage_attributes(model="x", cost=0.000123, input_tokens=123_456_000, output_tokens=789),
    )
    trace = Trace(records.trace_id, "big", root_span_id=root.span_id, records=records.all)
    scale = view_scale(trace.tree.root, trace.nodes)
    total = format_amount(trace.tree.root.subtotal.cost, scale.places)
    assert total.startswith("$1,234.5") and len(total) <= MAX_AMOUNT_CHARS
    line = row_figures_html(trace.tree.root, scale)
    assert ">123.5M<" in line and "123,456,789" in line  # shown short, exact in the title


def test_the_header_shows_the_budget_where_it_was_reached_and_the_refusal(
    records: RecordFactory,
) -> None:
    """A trace with a budget (`an.trace(budget=...)`, `--budget`) shows it under the totals:
    how much of it is used, the span whose cost reached it (in the order spans ended), the
    refused call, and the unpriced calls it does not count."""
    from agenta_notebook.runtime import BUDGET_DOLLARS
    from agenta_notebook.views.widget import TraceView

    def refused_loop(factory: RecordFactory, exception_type: str) -> Trace:
        """A loop whose root failed with `exception_type`, over the calls below."""
        root = factory.add(
            "loop",
            status="ERROR",
            events=(
                SpanEvent(
                    "exception",
                    10**12,
                    {"exception.type": exception_type, "exception.message": refusal},
                ),
            ),
            **{BUDGET_DOLLARS: str(budget)},
        )
        calls(factory, root)
        return Trace(factory.trace_id, "loop", root_span_id=root.span_id, records=factory.all)

    def calls(factory: RecordFactory, root: SpanRecord) -> None:
        for index in range(4):
            factory.add(
                f"call {index}",
                root,
                type="llm",
                **usage_attributes(model="gpt-4o-mini", input_tokens=1_000, output_tokens=100),
            )
        factory.add(
            "local",
            root,
            type="llm",
            **usage_attributes(model="my-local-llama", input_tokens=10, output_tokens=1),
        )

    plain = RecordFactory()
    calls(plain, plain.add("loop"))
    one_call = Trace(plain.trace_id, "loop", records=plain.all).find("call 0").own.cost
    assert one_call is not None and one_call > 0
    budget = one_call * Decimal("2.5")
    call = "POST /chat/completions (model gpt-4o-mini)"
    refusal = f"budget of ${budget} reached: this trace has spent more; refused: {call}"
    # as OpenTelemetry records it: the qualified name
    trace = refused_loop(records, "agenta_notebook.budget.BudgetExceeded")
    state = views_html.budget_state(trace.tree)
    assert state is not None
    assert state.dollars == budget and state.crossed_at == "call 2"  # 3 calls >= 2.5
    assert state.refused == call and state.unpriced_calls == 1  # the call, not the totals
    assert (state.crossed_index, state.counted) == (3, 5)
    used = f"{float(trace.totals.cost or 0) / float(budget):.0%}"
    for shown in (static_html(trace), TraceView(trace).header.value):
        assert f"({used})" in shown
        assert "reached at <i>call 2</i> (3rd of 5 spans with usage)" in shown
        assert f"refused: {views_html.escape(call)}</span>" in shown
        assert "1 unpriced call not counted in the budget" in shown
    assert views_html.budget_state(Trace(plain.trace_id, "loop", records=plain.all).tree) is None
    # Another package's exception of that name is not our refusal (as in the roll-up).
    state = views_html.budget_state(refused_loop(RecordFactory(), "gateway.BudgetExceeded").tree)
    assert state is not None and state.refused is None
