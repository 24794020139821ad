"""The ipywidgets tree, driven in the kernel process through its real widgets."""

from __future__ import annotations

import html
import threading
import time
from decimal import Decimal
from pathlib import Path

import ipywidgets
import pytest
from conftest import RecordFactory
from opentelemetry import context as otel_context

import agenta_notebook as an
from agenta_notebook.collector import Collector
from agenta_notebook.core.rollup import SpanEvent, SpanNode, SpanRecord
from agenta_notebook.live import Trace
from agenta_notebook.views.display import MIN_INTERVAL, TraceDisplay, open_view_count
from agenta_notebook.views.html import format_amount, format_money_in, format_tokens
from agenta_notebook.views.widget import PAGE_SIZE, Row, TraceView, live_widget_count

LLM = "llm"


def usage(tokens: int, model: str = "gpt-4o-mini") -> dict[str, object]:
    return {
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": tokens,
        "gen_ai.usage.output_tokens": tokens // 10,
    }


def small_trace(records: RecordFactory) -> Trace:
    root = records.add("root", type="workflow")
    agent = records.add("agent", root, type="agent", **{"gen_ai.usage.input_tokens": 5})
    records.add("plan", agent, type=LLM, **usage(1000))
    records.add("local", agent, type=LLM, **usage(400, "my-local-llama"))
    records.add("tool", agent, type="tool", status="ERROR")
    return Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)


def wide_trace(records: RecordFactory, groups: int = 5, per_group: int = 300) -> Trace:
    root = records.add("root", type="workflow")
    for group in range(groups):
        parent = records.add(f"group {group}", root, type="agent")
        for index in range(per_group):
            records.add(f"call {group}.{index}", parent, type=LLM, **usage(10 + index))
    return Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)


def names(view: TraceView) -> list[str]:
    """The span names of the visible rows, in order."""
    return [row.node.name for row, _label, _line in view.visible if row.kind == "span"]


class RowView:
    """One visible row as the tests look at it: its button text and its figures line."""

    def __init__(self, view: TraceView, row: Row, label: str, figures: str) -> None:
        self.view = view
        self.row = row
        self.label = label
        self.figures = figures

    def click(self) -> None:
        """Click the row's button (where the row is now), through the front end's protocol."""
        for position, (row, _label, _line) in enumerate(self.view.visible):
            if row.kind == self.row.kind and row.node is self.row.node:
                self.view.click_row(position)
                return
        raise AssertionError("the row is not shown")


def row_of(view: TraceView, span_id: int, kind: str = "span") -> RowView | None:
    """The visible row of a span (or its "show more" row), if shown."""
    for row, label, line in view.visible:
        if row.kind == kind and row.node.span_id == span_id:
            return RowView(view, row, label, line)
    return None


def shown_cost(node: SpanNode, view: TraceView) -> str:
    """What a row's cost column shows: the view's unit, or "unpriced"."""
    subtotal = node.subtotal
    if subtotal.cost is None and subtotal.unpriced_calls:
        return "unpriced"
    return format_amount(subtotal.cost, view._scale.places)


def test_rows_show_the_core_figures(records: RecordFactory) -> None:
    trace = small_trace(records)
    view = TraceView(trace)
    try:
        assert names(view) == ["root", "agent", "plan", "local", "tool"]
        for node in trace.nodes:
            widgets = row_of(view, node.span_id)
            assert widgets is not None
            figures = widgets.figures
            assert format_tokens(node.subtotal.total_tokens) in figures
            assert shown_cost(node, view) in figures
            assert node.name in widgets.label
        root = row_of(view, trace.root.span_id)
        assert root is not None
        assert "+?" in root.figures and "1 model call without a price" in root.figures
        agent = trace.find("agent")
        assert agent.mismatch is not None
        agent_row = row_of(view, agent.span_id)
        assert agent_row is not None and "roll-up" in agent_row.figures
        tool_row = row_of(view, trace.find("tool").span_id)
        assert tool_row is not None and "✖ error" in tool_row.figures
        header = view.header.value
        totals = trace.totals
        assert format_money_in(totals.cost, totals.unpriced_calls, view._scale.places) in header
        assert "my-local-llama" in header and "model calls</b> 2" in header
    finally:
        view.close()


def test_a_wrapper_row_shows_the_calls_cost_not_its_claim() -> None:
    # Revised rule 2: the outer model call's 1000 tokens are a claim over the inner call,
    # so its row shows the inner call's cost and a roll-up marker, and no "own" cost.
    records = [
        SpanRecord(1, 1, None, "root", 0, 100),
        SpanRecord(1, 2, 1, "outer", 1, 90, attributes={"ag.type.node": LLM, **usage(1000)}),
        SpanRecord(1, 3, 2, "inner", 2, 80, attributes={"ag.type.node": LLM, **usage(500)}),
    ]
    trace = Trace(1, "root", root_span_id=1, records=records)
    view = TraceView(trace)
    try:
        outer = trace.find("outer")
        inner = trace.find("inner")
        assert outer.own.cost is None and outer.subtotal.cost == inner.own.cost
        widgets = row_of(view, outer.span_id)
        assert widgets is not None
        assert format_amount(inner.own.cost, view._scale.places) in widgets.figures
        assert "own" not in widgets.figures and "roll-up" in widgets.figures
    finally:
        view.close()


def test_children_are_created_on_first_expansion_and_paged(records: RecordFactory) -> None:
    trace = wide_trace(records)
    before = live_widget_count()
    view = TraceView(trace)
    try:
        # 1,506 spans: only the root and its 5 groups get rows at first.
        assert names(view) == ["root"] + [f"group {g}" for g in range(5)]
        first = live_widget_count() - before
        assert first == view.widget_count
        group = trace.find("group 1")
        group_row = row_of(view, group.span_id)
        assert group_row is not None
        assert row_of(view, trace.find("call 1.0").span_id) is None

        group_row.click()  # opens its details and expands it
        shown = names(view)
        assert shown[shown.index("group 1") + 1 : shown.index("group 2")] == [
            f"call 1.{i}" for i in range(PAGE_SIZE)
        ]
        # No widget per row: the details pane and the run of rows after it are new.
        assert view.details in view.rows_box.children
        assert live_widget_count() - before == first + 4
        more = row_of(view, group.span_id, "more")
        assert more is not None and more.label.endswith(" show 100 more (200 not shown)")

        more.click()
        assert names(view).count("call 1.199") == 1 and "call 1.200" not in names(view)
        more = row_of(view, group.span_id, "more")
        assert more is not None and more.label.endswith(" show 100 more (100 not shown)")
        more.click()
        assert "call 1.299" in names(view)
        assert row_of(view, group.span_id, "more") is None

        group_row.click()  # again: collapse
        assert "call 1.0" not in names(view)
        assert view.details not in view.rows_box.children
        count = live_widget_count()
        group_row.click()
        assert live_widget_count() == count
        assert "call 1.299" in names(view)
    finally:
        view.close()
    assert live_widget_count() == before


def test_first_display_of_a_big_trace_stays_under_1000_models(records: RecordFactory) -> None:
    trace = wide_trace(records, groups=40, per_group=500)
    assert len(trace.nodes) > 20_000
    before = live_widget_count()
    shown = TraceDisplay(trace, widget=True)
    try:
        assert live_widget_count() - before <= 1_000
        assert len(shown.bundle()["text/html"].encode()) < 1_000_000
    finally:
        shown.close()
    assert live_widget_count() == before


def test_sort_by_cost_and_duration() -> None:
    records = [SpanRecord(1, 1, None, "root", 0, 1_000_000)]
    spec = [("cheap", 10, 500), ("dear", 5000, 100), ("middle", 800, 900)]
    for index, (name, tokens, duration) in enumerate(spec, start=2):
        records.append(
            SpanRecord(
                1,
                index,
                1,
                name,
                index,
                index + duration,
                attributes={"ag.type.node": LLM, **usage(tokens)},
            )
        )
    trace = Trace(1, "root", root_span_id=1, records=records)
    view = TraceView(trace)
    try:
        assert names(view)[1:] == ["cheap", "dear", "middle"]
        view.sort_control.value = "cost"
        costs = [trace.find(n).subtotal.cost for n in names(view)[1:]]
        assert costs == sorted(costs, key=lambda c: -(c or Decimal(0)))
        assert names(view)[1:] == ["dear", "middle", "cheap"]
        view.sort_control.value = "duration"
        assert names(view)[1:] == ["middle", "cheap", "dear"]
        view.sort_control.value = "start"
        assert names(view)[1:] == ["cheap", "dear", "middle"]
    finally:
        view.close()


def test_filters_keep_matches_and_their_ancestors(records: RecordFactory) -> None:
    root = records.add("root", type="workflow")
    agent = records.add("agent", root, type="agent")
    records.add("Plan step", agent, type=LLM, **usage(100))
    failing = records.add("fetch", agent, type="tool", status="ERROR")
    records.add("retrieve", root, type="retriever")
    records.add("summarise", root, type=LLM, **usage(50))
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    view = TraceView(trace)
    try:
        view.text_control.value = "plan"
        assert names(view) == ["root", "agent", "Plan step"]
        assert "(filtered)" in view.status.value
        view.text_control.value = ""
        view.model_calls_control.value = True
        assert names(view) == ["root", "agent", "Plan step", "summarise"]
        view.model_calls_control.value = False
        view.errors_control.value = True
        assert names(view) == ["root", "agent", "fetch"]
        view.errors_control.value = False
        assert [label for label, _ in view.type_control.options] == [
            "all types",
            "agent",
            "llm",
            "retriever",
            "tool",
            "workflow",
        ]
        view.type_control.value = "retriever"
        assert names(view) == ["root", "retrieve"]
        view.type_control.value = ""
        assert len(names(view)) == len(trace.nodes)
        assert row_of(view, failing.span_id) is not None
    finally:
        view.close()


def test_expand_to_depth_and_collapse_all(records: RecordFactory) -> None:
    trace = wide_trace(records, groups=3, per_group=30)
    view = TraceView(trace, auto_budget=200)
    try:
        assert len(names(view)) == len(trace.nodes)  # small enough to open fully
        collapse = [
            c for c in view.controls.children if getattr(c, "description", "") == "collapse all"
        ]
        collapse[0].click()
        assert names(view) == ["root"]
        view.depth_control.value = 1
        expand = [
            c for c in view.controls.children if getattr(c, "description", "") == "expand to depth"
        ]
        expand[0].click()
        assert names(view) == ["root", "group 0", "group 1", "group 2"]
    finally:
        view.close()


def test_details_pane(records: RecordFactory) -> None:
    root = records.add("root")
    exception = SpanEvent(
        "exception",
        1_030,
        {
            "exception.type": "ValueError",
            "exception.message": "bad <input>",
            "exception.stacktrace": "Traceback (most recent call last):\n  File x, line 1",
        },
    )
    call = records.add(
        "call",
        root,
        type=LLM,
        status="ERROR",
        events=(exception,),
        **{**usage(1000), "gen_ai.usage.output_tokens": "abc", "custom.key": "<value>"},
    )
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    node = trace.find("call")
    view = TraceView(trace)
    try:
        assert view.details not in view.rows_box.children
        widgets = row_of(view, call.span_id)
        assert widgets is not None
        widgets.click()
        children = list(view.rows_box.children)
        assert children.index(view.details) == 1  # right after the run ending at "call"
        selected = row_of(view, call.span_id)
        assert selected is not None and "agn-selected" in view.visible[-1][2]
        assert "agn-sel" in view._segments[0].names._dom_classes
        assert view._segments[0].rows[-1].node.span_id == call.span_id
        text = view.details.value
        assert "ValueError" in text and "bad &lt;input&gt;" in text
        assert "Traceback (most recent call last)" in text
        assert "custom.key" in text and "&lt;value&gt;" in text
        assert node.priced.source == "price table" and "priced from the price table" in text
        assert node.priced.matched_model is not None and node.priced.matched_model in text
        assert node.warnings and any("abc" in w for w in node.warnings)
        assert all(html.escape(w) in text for w in node.warnings)
        assert "own (counted)" in text and "subtotal" in text
        widgets.click()  # again: closes
        assert view.details not in view.rows_box.children
    finally:
        view.close()


def test_span_strings_never_reach_html_unescaped() -> None:
    payload = "<img src=x onerror=alert(1)>"
    records = [
        SpanRecord(1, 1, None, payload, 0, 100),
        SpanRecord(1, 2, 1, payload, 1, 50, attributes={"ag.type.node": payload, payload: payload}),
    ]
    trace = Trace(1, payload, root_span_id=1, records=records)
    view = TraceView(trace)
    try:
        view.select(2)
        values = [view.header.value, view.status.value, view.details.value]
        values += [line for _row, _label, line in view.visible]
        assert all(payload not in value for value in values)
        assert "&lt;img src=x onerror=alert(1)&gt;" in view.details.value
        # Button labels are text (the front end sets textContent), shown verbatim.
        row = row_of(view, 2)
        assert row is not None and payload in row.label
    finally:
        view.close()


def test_live_refresh_is_coalesced_and_keeps_expansion(records: RecordFactory) -> None:
    root = records.add("root", running=True)
    steps = [records.add(f"step {i}", root, type="agent") for i in range(3)]
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    shown = TraceDisplay(trace, widget=True)
    view = shown.view
    assert isinstance(view, TraceView)
    try:
        view.toggle(steps[0].span_id)  # the user expands step 0 (it has no children yet)
        view.toggle(steps[1].span_id)

        def add_spans(worker: int) -> None:
            for index in range(50):
                parent = steps[index % 3]
                record = records.add(f"call {worker}.{index}", parent, type=LLM, **usage(10))
                trace.add_records([record])
                shown.refresh()

        threads = [threading.Thread(target=add_spans, args=(w,)) for w in range(4)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        trace.add_records([SpanRecord(**{**_fields(root), "end_time_ns": 10**9})])
        shown.finish()
        elapsed = time.monotonic() - started
        # 200 refreshes from 4 threads: at most one redraw per MIN_INTERVAL, plus finish.
        assert 1 <= shown.redraws <= 2 + elapsed / MIN_INTERVAL, (shown.redraws, elapsed)
        assert shown.redraws < 50
        visible = names(view)
        assert "call 0.0" in visible and "call 0.1" in visible  # under steps 0 and 1
        assert "call 0.2" not in visible  # step 2 stayed collapsed
        root_row = row_of(view, root.span_id)
        assert root_row is not None
        assert format_tokens(trace.totals.total_tokens) in root_row.figures
        assert "running" not in root_row.figures

        # A span that ends after finish() still reaches the view.
        late = records.add("late call", steps[0], type=LLM, **usage(10))
        trace.add_records([late])
        shown.refresh()
        deadline = time.monotonic() + 30
        while "late call" not in names(view) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "late call" in names(view)
    finally:
        shown.close()
    assert view.closed


def _drawn_tokens(view: TraceView, trace: Trace) -> str | None:
    """The figures line of the root row, as drawn."""
    assert trace.root_span_id is not None
    row = row_of(view, trace.root_span_id)
    return None if row is None else row.figures


def test_a_burst_of_spans_is_redrawn_a_few_times_and_the_last_state_always(
    collector: Collector, threads_propagate_context: None
) -> None:
    """One throttle (the display's): N spans ending from 4 threads cause at most one
    redraw per MIN_INTERVAL, and the redraw after the burst shows every span."""
    per_thread, workers = 100, 4
    final = format_tokens(per_thread * workers * 5)  # 3 + 2 tokens per call
    with an.trace("burst") as trace:
        shown = TraceDisplay(trace, widget=True)  # listens to the trace itself
        view = shown.view
        assert isinstance(view, TraceView)
        try:

            def work(worker: int) -> None:
                for index in range(per_thread):
                    with an.span(f"call {worker}.{index}", type=LLM):
                        an.record_usage(model="gpt-4o-mini", input_tokens=3, output_tokens=2)
                    time.sleep(0.002)

            threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ended = time.monotonic()
            # Nobody calls refresh() or finish(): the trailing redraw comes by itself.
            deadline = ended + 10
            while final not in (_drawn_tokens(view, trace) or "") and time.monotonic() < deadline:
                time.sleep(0.01)
            drawn_at = time.monotonic()
            assert final in (_drawn_tokens(view, trace) or ""), "the final state is drawn"
            assert drawn_at - ended < 2 * MIN_INTERVAL + 1, "soon after the burst"
            time.sleep(MIN_INTERVAL)  # the redraw that drew it has counted itself by now
            redraws = shown.redraws
            # The first redraw waits MIN_INTERVAL; then at most one per MIN_INTERVAL.
            bound = 1 + (drawn_at - started) / MIN_INTERVAL
            assert 1 <= redraws <= bound, (redraws, bound)
            assert redraws < workers * per_thread / 10
            time.sleep(3 * MIN_INTERVAL)
            assert shown.redraws == redraws, "no redraw without a new span"
        finally:
            shown.close()


def test_a_slow_redraw_spaces_the_next_ones_out(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redraw that took t seconds (a huge live trace) lets the next one start only
    `SLOW_REDRAW_SPACING` * t later: the view takes a bounded share of the interpreter
    from the cell. A fast one waits `MIN_INTERVAL`. (A clock of our own: no timing.)"""
    from types import SimpleNamespace

    from agenta_notebook.views import display

    clock = [1000.0]
    monkeypatch.setattr(display, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with an.trace("slow") as trace:
        shown = TraceDisplay(trace, widget=True)
        try:
            took = [0.5]

            def redraw(*, settle: bool) -> None:
                clock[0] += took[0]

            monkeypatch.setattr(shown, "_redraw", redraw)
            shown._scheduled_redraw()
            assert shown._next_allowed == pytest.approx(1000.5 + display.SLOW_REDRAW_SPACING * 0.5)
            assert display.SLOW_REDRAW_SPACING >= 8  # at most a ninth of the time redrawing
            took[0] = 0.001
            shown._scheduled_redraw()
            assert shown._next_allowed == pytest.approx(clock[0] + MIN_INTERVAL)
        finally:
            shown.close()


def test_a_span_ending_during_a_redraw_is_drawn_by_the_next_one(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span that ends while a redraw is under way (after it read the tree) is not lost:
    it schedules the next redraw, which shows it."""
    with an.trace("during") as trace:
        shown = TraceDisplay(trace, widget=True)
        view = shown.view
        assert isinstance(view, TraceView)
        real_update = view.update
        arrived = threading.Event()
        in_the_trace = otel_context.get_current()

        def update_then_a_span_ends() -> None:
            real_update()  # draws the tree as it is now...
            if arrived.is_set():
                return
            arrived.set()
            token = otel_context.attach(in_the_trace)  # (on the redraw's timer thread)
            try:
                with an.span("arrives mid-redraw", type=LLM):  # ...then one more span ends
                    an.record_usage(model="gpt-4o-mini", input_tokens=7, output_tokens=0)
            finally:
                otel_context.detach(token)

        monkeypatch.setattr(view, "update", update_then_a_span_ends)
        try:
            with an.span("first", type=LLM):
                an.record_usage(model="gpt-4o-mini", input_tokens=1, output_tokens=0)
            deadline = time.monotonic() + 10
            while shown.redraws < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert arrived.is_set() and shown.redraws == 2, shown.redraws
            assert format_tokens(8) in (_drawn_tokens(view, trace) or ""), "both spans drawn"
        finally:
            shown.close()


def test_the_header_and_the_rows_are_drawn_from_one_snapshot(
    records: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span that ends between the view's read of the tree and its header (spans end on
    other threads while it draws) is in neither: the header's totals are the rows' ones,
    and one redraw folds the trace once."""
    trace = small_trace(records)
    root = trace.tree.root.record
    view = TraceView(trace)
    reads = 0
    real_tree = Trace.tree

    def tree_then_a_call_ends(self: Trace) -> object:
        nonlocal reads
        reads += 1
        tree = real_tree.fget(self)  # type: ignore[attr-defined]
        self.add_records([records.add(f"late {reads}", root, type=LLM, **usage(7))])
        return tree

    monkeypatch.setattr(Trace, "tree", property(tree_then_a_call_ends))
    trace.add_records([records.add("first", root, type=LLM, **usage(3))])
    view.update()
    drawn = view.state.tree
    assert any(node.name == "first" for node in drawn.nodes), "the view drew the new tree"
    assert reads == 1, "one read of the tree, so one fold, per redraw"
    assert f"<b>spans</b> {drawn.size:,}" in view.header.value
    tokens = drawn.totals.input_tokens
    assert tokens is not None and format_tokens(tokens) in view.header.value
    monkeypatch.undo()
    current = trace.summary()
    assert current.spans == drawn.size + reads  # the calls that ended after each read
    older = trace.summary(drawn)
    assert older.spans == drawn.size and trace.summary() is current, "still kept"


def _fields(record: SpanRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in SpanRecord.__slots__}


def test_close_and_dropped_traces_free_every_widget(collector: Collector) -> None:
    before = live_widget_count()
    views_before = open_view_count()
    displays = []
    for index in range(4):
        with an.trace(f"cell {index}") as trace:
            with an.span("call", type=LLM):
                an.record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=1)
        displays.append(TraceDisplay(trace, widget=True))
        bundle = trace._repr_mimebundle_()
        assert bundle["text/plain"].startswith(f"Trace 'cell {index}'")
    assert live_widget_count() > before
    displays[0].close()
    assert displays[0].view is not None and displays[0].view.closed
    collector.clear()  # retention drops every trace: their views close
    assert all(d.view is not None and d.view.closed for d in displays)
    assert live_widget_count() == before
    assert open_view_count() == views_before


def test_display_bundle_has_widget_html_and_text(records: RecordFactory) -> None:
    trace = small_trace(records)
    shown = TraceDisplay(trace, widget=True)
    try:
        bundle = shown.bundle()
        assert set(bundle) == {
            "application/vnd.jupyter.widget-view+json",
            "text/html",
            "text/plain",
        }
        assert shown.view is not None
        model_id = bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
        assert model_id == shown.view.widget.model_id
        assert model_id in ipywidgets.widgets.widget._instances
        assert "<details" in bundle["text/html"]
    finally:
        shown.close()
    # outside a kernel there is no widget, only the static renderings
    assert set(Trace(1, "t", records=[SpanRecord(1, 1, None, "t", 0, 1)])._repr_mimebundle_()) == {
        "text/html",
        "text/plain",
    }


def test_output_bundle_in_a_real_kernel() -> None:
    """show_trace in a kernel: one output with the widget, the static HTML and the summary,
    settled by finish() to the final trace."""
    import nbclient
    import nbformat

    code = (
        "import agenta_notebook as an\n"
        "from agenta_notebook.views.display import show_trace\n"
        "from agenta_notebook.views.widget import live_widget_count\n"
        "before = live_widget_count()\n"
        "with an.trace('kernel demo') as t:\n"
        "    shown = show_trace(t)\n"
        "    with an.span('call', type='llm'):\n"
        "        an.record_usage(model='gpt-4o-mini', input_tokens=100, output_tokens=10)\n"
        "shown.finish()\n"
        "created = live_widget_count() - before\n"
        "shown.close()\n"
        "print(created, live_widget_count() - before)\n"
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code)]
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    displays = [o for o in outputs if o["output_type"] == "display_data"]
    assert len(displays) == 1
    data = displays[0]["data"]
    assert set(data) == {"application/vnd.jupyter.widget-view+json", "text/html", "text/plain"}
    assert data["text/plain"].startswith("Trace 'kernel demo': 2 spans · 1 model call · tokens 110")
    assert "<details" in data["text/html"] and "call" in data["text/html"]
    created, left = (int(n) for n in "".join(o.get("text", "") for o in outputs).split())
    assert created > 0 and left == 0


def test_running_and_detached_markers(records: RecordFactory) -> None:
    root = records.add("root", running=True)
    records.add("still going", root, running=True)
    records.add("orphan", 0xDEAD)  # its parent is not in the trace
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    view = TraceView(trace)
    try:
        going = row_of(view, trace.find("still going").span_id)
        orphan = row_of(view, trace.find("orphan").span_id)
        done = row_of(view, trace.root.span_id)
        assert going is not None and orphan is not None and done is not None
        assert "⏳ running" in going.figures
        assert "⤴ detached" in orphan.figures
        assert "detached" not in going.figures and "running" not in orphan.figures
        assert "(2 running)" in view.header.value
    finally:
        view.close()


def _count_updates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the widget state updates sent to the front end (one message each)."""
    sent: list[str] = []
    original = ipywidgets.Widget.send_state

    def send_state(self: ipywidgets.Widget, key: object = None) -> None:
        sent.append(type(self).__name__)
        original(self, key)

    monkeypatch.setattr(ipywidgets.Widget, "send_state", send_state)
    return sent


def test_a_plain_display_is_cheap(records: RecordFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No controls and no details pane until used; two widgets per row; widgets made with
    their final state, so creating the view sends no updates."""
    trace = small_trace(records)
    sent = _count_updates(monkeypatch)
    before = live_widget_count()
    view = TraceView(trace)
    try:
        assert sent == []
        rows = len(names(view))
        assert rows == len(trace.nodes)
        # header, rows note, options, rows box, root box, the costliest list, and one run
        # of rows: row buttons, figures and their box; layout and styles are shared. No
        # widget per row.
        assert live_widget_count() - before == 9 == view.widget_count
        assert view._controls is None and view._details is None
        assert len(view.rows_box.children) == 1 and len(view.visible) == rows

        view.update()  # nothing changed: nothing is sent
        assert sent == []
        view.toggle_options()
        assert view.controls in view.widget.children
        assert view.options_button.description == "⚙ hide options"
        view.toggle_options()
        assert view.controls not in view.widget.children
        assert view.options_button.description == "⚙ options"
    finally:
        view.close()
    assert live_widget_count() == before


def test_clicking_a_row_opens_details_and_expands(records: RecordFactory) -> None:
    trace = wide_trace(records, groups=2, per_group=3)
    view = TraceView(trace, auto_budget=1)
    try:
        assert names(view) == ["root", "group 0", "group 1"]
        group = trace.find("group 0")
        row = row_of(view, group.span_id)
        assert row is not None and row.label == "\u2003▸ group 0 · agent"  # indented
        row.click()
        assert names(view) == ["root", "group 0", "call 0.0", "call 0.1", "call 0.2", "group 1"]
        assert view.state.selected == group.span_id
        opened = row_of(view, group.span_id)
        assert opened is not None and opened.label == "\u2003▾ group 0 · agent"
        leaf = row_of(view, trace.find("call 0.1").span_id)
        assert leaf is not None
        leaf.click()  # another row: its details; group 0 stays open
        assert view.state.selected == trace.find("call 0.1").span_id
        assert "call 0.2" in names(view)
        row.click()  # group 0 again: selected, already open
        assert "call 0.2" in names(view) and view.state.selected == group.span_id
        row.click()  # the selected row: details close and it collapses
        assert names(view) == ["root", "group 0", "group 1"]
        assert view.state.selected is None and view.details not in view.rows_box.children
    finally:
        view.close()


def test_finish_sends_the_output_again_only_when_it_changed(records: RecordFactory) -> None:
    class Handle:
        def __init__(self) -> None:
            self.updates = 0

        def update(self, _data: object, raw: bool = False) -> None:
            self.updates += 1

    trace = small_trace(records)
    shown = TraceDisplay(trace, widget=True)
    handle = Handle()
    try:
        shown._handle, shown._shown = handle, shown.bundle()
        shown.finish()
        assert handle.updates == 0
        trace.add_records([records.add("late", type=LLM, **usage(10))])
        shown.finish()
        assert handle.updates == 1
        assert "late" in names(shown.view)
    finally:
        shown.close()


def test_views_of_loaded_traces_stay_bounded(tmp_path: Path, collector: Collector) -> None:
    """Loaded traces are outside retention: displaying 1,000 of them keeps the newest 20
    views open and closes the others, so widget models do not pile up."""
    from agenta_notebook.runtime import MAX_UNKEPT_VIEWS

    with an.trace("saved") as trace:
        with an.span("call", type=LLM):
            an.record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=1)
    path = tmp_path / "saved.json"
    trace.save(path)
    kept = TraceDisplay(trace, widget=True)  # a kept trace's view is never evicted
    views_before, widgets_before = open_view_count(), live_widget_count()
    displays = []
    most_widgets = 0
    for _ in range(1_000):
        displays.append(TraceDisplay(an.load(path), widget=True))
        assert open_view_count() <= views_before + MAX_UNKEPT_VIEWS
        most_widgets = max(most_widgets, live_widget_count())
    per_view = displays[-1].view.widget_count if displays[-1].view else 0
    assert most_widgets <= widgets_before + per_view * MAX_UNKEPT_VIEWS
    assert open_view_count() == views_before + MAX_UNKEPT_VIEWS
    assert all(d.closed for d in displays[:-MAX_UNKEPT_VIEWS])
    assert not any(d.closed for d in displays[-MAX_UNKEPT_VIEWS:]) and not kept.closed
    # a closed view still renders: its static HTML and summary, without the widget
    assert set(displays[0].bundle()) == {"text/html", "text/plain"}
    for shown in (kept, *displays):
        shown.close()
    assert live_widget_count() == widgets_before - per_view
    assert open_view_count() == views_before - 1


def test_loaded_trace_views_in_a_real_kernel_stay_bounded(tmp_path: Path) -> None:
    """`display(an.load(p))` 200 times in a kernel: open views and widget models stay
    bounded, and the evicted outputs are replaced by their static renderings."""
    from live_kernel import Kernel, new_client

    client = new_client(tmp_path)
    with client.setup_kernel():
        kernel = Kernel(client)
        kernel.run(
            "import agenta_notebook as an\n"
            "from agenta_notebook.views.display import open_view_count, show_trace\n"
            "from agenta_notebook.views.widget import live_widget_count\n"
            "with an.trace('saved') as t:\n"
            "    with an.span('call', type='llm'):\n"
            "        an.record_usage(model='gpt-4o-mini', input_tokens=10, output_tokens=1)\n"
            "t.save('saved.json')\n"
            "before, views = live_widget_count(), open_view_count()\n"
        )
        cell = kernel.run(
            "shown = [show_trace(an.load('saved.json')) for _ in range(20)]\n"
            "for _ in range(180):\n"
            "    display(an.load('saved.json'))\n"
        )
        counts = kernel.value("[live_widget_count() - before, open_view_count() - views]")
    widgets_made, views_open = counts
    assert views_open == 20
    assert 0 < widgets_made <= 20 * 10
    outputs = [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(outputs) == 200
    # the first 20 were shown with a handle: closed, their outputs now static
    for output in outputs[:20]:
        assert set(output["data"]) == {"text/html", "text/plain"}
    assert "application/vnd.jupyter.widget-view+json" in outputs[-1]["data"]


def test_costliest_list_jumps_to_a_span_beyond_a_page() -> None:
    """The costliest spans are a list of buttons next to the per-model table; clicking
    one expands its ancestors, pages in its siblings up to it, and opens its details."""
    records = [SpanRecord(1, 1, None, "root", 0, 10_000), SpanRecord(1, 2, 1, "batch", 1, 9_000)]
    for index in range(250):
        tokens = 10_000 if index == 240 else 10 + index
        records.append(
            SpanRecord(
                1,
                10 + index,
                2,
                f"call {index}",
                10 + index,
                11 + index,
                attributes={"ag.type.node": LLM, **usage(tokens)},
            )
        )
    trace = Trace(1, "root", root_span_id=1, records=records)
    view = TraceView(trace, auto_budget=3)
    try:
        assert "call 240" not in names(view)  # collapsed, and beyond the first page
        assert view.costliest is not None and view.costliest in view.widget.children
        labels = view.costliest._options_labels
        assert len(labels) == 5 and "call 240" in labels[0] and "gpt-4o-mini" in labels[0]
        view.jump_to(0)
        assert view.state.selected == 250
        assert "call 240" in names(view)
        assert view.details in view.rows_box.children
        assert "call 240" in view.details.value
        assert view.costliest.index is None  # the list is not a selection
    finally:
        view.close()


def test_waterfall_in_rows_follows_the_scope(records: RecordFactory) -> None:
    trace = small_trace(records)
    view = TraceView(trace)
    try:
        plan = trace.find("plan")
        row = row_of(view, plan.span_id)
        assert row is not None and 'class="agn-wf"' in row.figures
        before = row.figures
        view._event(lambda: view.state.set_waterfall_scope("parent"))
        row = row_of(view, plan.span_id)
        assert row is not None and row.figures != before and "into its parent" in row.figures
        heads = view.status.value
        for head in ("duration", "timeline", "tokens", "cost", "share"):
            assert f">{head}<" in heads
        assert "agn-conversation" in view.header.value  # the details pane's style rules
    finally:
        view.close()


def test_a_live_redraw_walks_no_node_it_does_not_show(
    records: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redraw of a running trace reads the fold's stats and the rows on screen: the
    tree's full list of nodes is never walked, and the header still counts every span,
    model and cost."""
    from agenta_notebook.core import rollup

    root = records.add("root", running=True)
    agents = [records.add(f"agent {i}", root, type="agent") for i in range(30)]
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    view = TraceView(trace)
    try:
        walks: list[int] = []
        walked = rollup.TraceTree.nodes

        def counting(tree: rollup.TraceTree) -> tuple[SpanNode, ...]:
            walks.append(1)
            return walked.__get__(tree)  # type: ignore[no-any-return]

        for batch in range(3):
            added = [
                records.add(f"call {batch}.{i}", agents[i % 30], type=LLM, **usage(10))
                for i in range(600)
            ]
            trace.add_records(added)
            view.update()
            if batch == 0:  # the first fold takes its stats from one walk
                monkeypatch.setattr(rollup.TraceTree, "nodes", property(counting))
        assert walks == []
        tree = trace.tree
        monkeypatch.undo()
        assert f"of {len(tree.nodes):,} spans shown" in view.status_line.value
        assert len(tree.nodes) == 1 + 30 + 1800
        header = view.header.value
        assert format_tokens(trace.totals.total_tokens) in header
        for row in tree.by_model():
            assert html.escape(row.model) in header
    finally:
        view.close()
