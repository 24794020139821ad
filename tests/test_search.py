"""Search and filters of the trace view: the text search over what a span recorded, the
"cost ≥" and "duration ≥" filters, "no span matches", the waterfall scope control, and
`reveal` (the jump from the costliest spans) through paging and filters."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from agenta_notebook.core.rollup import SpanEvent, SpanRecord, TraceTree, build_tree
from agenta_notebook.live import Trace
from agenta_notebook.views.html import view_scale, waterfall_bar, waterfall_html
from agenta_notebook.views.state import (
    SEARCH_CACHE_CHARS,
    SEARCH_CHARS,
    SEARCH_SPAN_CHARS,
    TreeState,
    parse_min_cost,
    parse_min_duration,
)
from agenta_notebook.views.widget import TraceView

MS = 1_000_000  # nanoseconds


def model_call(tokens: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "ag.type.node": "llm",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": tokens,
        "gen_ai.usage.output_tokens": tokens // 10,
    }


def record(
    span_id: int,
    name: str,
    *,
    parent: int | None = 1,
    start_ms: float = 0,
    duration_ms: float = 1,
    events: tuple[SpanEvent, ...] = (),
    **attributes: Any,
) -> SpanRecord:
    start = int(start_ms * MS)
    return SpanRecord(
        1,
        span_id,
        parent,
        name,
        start,
        start + int(duration_ms * MS),
        attributes=attributes,
        events=events,
    )


def rich_records() -> list[SpanRecord]:
    """Spans that carry what the search has to read, each a word found nowhere else."""
    question = {"city": "Montevideo", "n": 3}
    return [
        record(1, "root", parent=None, duration_ms=5_000),
        record(
            2,
            "answer",
            **{
                "ag.type.node": "workflow",
                "ag.data.inputs.question": "@ag.type=json:" + json.dumps(question),
                "ag.data.outputs.__default__": "The Capital is QUITO",
            },
        ),
        record(
            3,
            "chat",
            **model_call(100, "gpt-4o"),
            **{
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Tell me about Lisbon",
                "output.value": '{"choices": ["about Reykjavik"]}',
            },
        ),
        record(
            4,
            "genai chat",
            events=(
                SpanEvent("gen_ai.user.message", 5, {"content": "what about Nairobi?"}),
                SpanEvent("gen_ai.choice", 6, {"message": '{"content": "Nairobi is big"}'}),
            ),
            **model_call(10, "claude-3-5-haiku-latest"),
        ),
        record(5, "retrieve", **{"ag.type.node": "retriever", "db.row_count": 4242}),
        record(6, "tags", **{"ag.type.node": "tool", "tags": ("alpha", "Kathmandu")}),
        record(7, "input.value", **{"ag.type.node": "tool", "input.value": "plain Oslo"}),
    ]


def matching(state: TreeState) -> list[str]:
    return [
        node.name
        for node in state.tree.nodes
        if node is not state.tree.root and state.matches(node)
    ]


def test_search_reads_names_types_models_inputs_outputs_and_attribute_values() -> None:
    state = TreeState(build_tree(rich_records(), 1))
    expected = {
        "montevideo": ["answer"],  # Agenta's inputs, JSON text
        "quito": ["answer"],  # Agenta's output, any case
        "lisbon": ["chat"],  # OpenInference messages
        "REYKJAVIK": ["chat"],  # OpenInference output.value
        "nairobi": ["genai chat"],  # GenAI events
        "4242": ["retrieve"],  # a number by its text
        "kathmandu": ["tags"],  # an item of a list value
        "oslo": ["input.value"],
        "gpt-4o": ["chat"],  # the model
        "haiku": ["genai chat"],
        "retriever": ["retrieve"],  # the type
        "genai": ["genai chat"],  # the name
    }
    for needle, names in expected.items():
        state.set_filter(text=needle)
        assert matching(state) == names, needle
        shown = [row.node.name for row in state.rows()]
        assert shown == ["root", *names], needle
    # Agenta's marker of JSON text is not part of what the span recorded.
    state.set_filter(text="ag.type=json")
    assert matching(state) == []


def test_a_field_prefix_searches_that_field_only() -> None:
    state = TreeState(build_tree(rich_records(), 1))
    state.set_filter(text="gpt-4o")
    assert matching(state) == ["chat"]
    state.set_filter(text="Model:claude")
    assert matching(state) == ["genai chat"]
    state.set_filter(text="type:TOOL")
    assert matching(state) == ["tags", "input.value"]
    state.set_filter(text="name:input")
    assert matching(state) == ["input.value"]
    # Anything else with a colon is plain text, found anywhere.
    state.set_filter(text='"city": "montevideo"')
    assert matching(state) == ["answer"]
    state.set_filter(text="model: gpt-4o")
    assert matching(state) == []


def test_search_reads_a_bounded_part_of_huge_values() -> None:
    # A span with little text is read whole; one with more than SEARCH_SPAN_CHARS, only
    # the first SEARCH_CHARS characters of each value.
    long = "x" * (SEARCH_CHARS + 10)
    huge = "x" * SEARCH_SPAN_CHARS
    records = [
        record(1, "root", parent=None),
        record(2, "small", **{"output.value": long + " needle"}),
        record(3, "early", **{"output.value": "needle " + huge}),
        record(4, "late", **{"output.value": huge + " needle"}),
        record(5, "second value", **{"input.value": huge, "output.value": "Needle"}),
    ]
    state = TreeState(build_tree(records, 1))
    state.set_filter(text="NEEDLE")
    assert matching(state) == ["small", "early", "second value"]


def test_search_follows_a_span_that_changed_in_a_live_trace() -> None:
    first = [record(1, "root", parent=None), record(2, "call", **{"output.value": "pending"})]
    state = TreeState(build_tree(first, 1))
    state.set_filter(text="done")
    assert state.nothing_matches
    later = [first[0], record(2, "call", **{"output.value": "done"})]
    state.set_tree(build_tree(later, 1))
    assert matching(state) == ["call"] and not state.nothing_matches


def priced_tree() -> TraceTree:
    records = [
        record(1, "root", parent=None, duration_ms=3_000),
        record(2, "agent", duration_ms=2_500, **{"ag.type.node": "agent"}),
        record(3, "dear", parent=2, duration_ms=1_600, **model_call(50_000)),
        record(4, "cheap", parent=2, duration_ms=150, **model_call(10)),
        record(5, "unpriced", parent=2, duration_ms=900, **model_call(9_000, "my-local-llama")),
        record(6, "tool", duration_ms=200, **{"ag.type.node": "tool"}),
    ]
    return build_tree(records, 1)


def test_cost_filter_keeps_spans_whose_subtotal_reaches_it() -> None:
    state = TreeState(priced_tree())
    by_name = {node.name: node for node in state.tree.nodes}
    dear, cheap = by_name["dear"].subtotal.cost, by_name["cheap"].subtotal.cost
    assert dear is not None and cheap is not None and cheap < dear
    assert by_name["unpriced"].subtotal.cost is None
    state.set_filter(min_cost=dear)
    assert matching(state) == ["agent", "dear"]
    assert [row.node.name for row in state.rows()] == ["root", "agent", "dear"]
    state.set_filter(min_cost=str(cheap))  # as typed
    assert matching(state) == ["agent", "dear", "cheap"]
    state.set_filter(min_cost=f"${dear + 1}")
    assert state.nothing_matches and [row.node.name for row in state.rows()] == ["root"]
    state.set_filter(min_cost=None)
    assert not state.filter_active
    state.set_filter(min_cost=Decimal(0))  # keeps everything, unpriced spans too
    assert not state.filter_active


def test_duration_filter_reads_milliseconds_and_seconds() -> None:
    state = TreeState(priced_tree())
    state.set_filter(min_duration_ms="1.5s")
    assert matching(state) == ["agent", "dear"]
    state.set_filter(min_duration_ms="200ms")
    assert matching(state) == ["agent", "dear", "unpriced", "tool"]
    state.set_filter(min_duration_ms="900")
    assert matching(state) == ["agent", "dear", "unpriced"]
    state.set_filter(min_duration_ms=150.0)
    assert matching(state) == ["agent", "dear", "cheap", "unpriced", "tool"]
    # Both filters at once: the unpriced span lasts long enough, but has no cost.
    state.set_filter(min_duration_ms="800ms", min_cost="0.000001")
    assert matching(state) == ["agent", "dear"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_cost", "abc"),
        ("min_cost", "-1"),
        ("min_cost", "nan"),
        ("min_duration_ms", "fast"),
        ("min_duration_ms", "1.5 hours"),
        ("min_duration_ms", -3.0),
    ],
)
def test_a_bad_threshold_is_refused_and_changes_nothing(field: str, value: Any) -> None:
    state = TreeState(priced_tree())
    state.set_filter(min_cost="0.0001", min_duration_ms="100", text="a")
    before = (state.min_cost, state.min_duration_ms, state.text)
    with pytest.raises(ValueError, match="≥"):
        state.set_filter(**{field: value}, text="zzz")
    assert (state.min_cost, state.min_duration_ms, state.text) == before


def test_parsing_thresholds() -> None:
    assert parse_min_cost("0.01") == Decimal("0.01")
    assert parse_min_cost(" $ 2 ") == Decimal(2)
    assert parse_min_cost("  ") is None
    assert parse_min_duration("2m") == 120_000.0
    assert parse_min_duration(".5 S") == 500.0
    assert parse_min_duration("") is None


def test_nothing_matches_is_false_when_the_root_itself_matches() -> None:
    state = TreeState(priced_tree())
    state.set_filter(text="nowhere")
    assert state.nothing_matches
    state.set_filter(text="root")
    assert not state.nothing_matches
    assert [row.node.name for row in state.rows()] == ["root"]
    state.set_filter(text="")
    assert not state.nothing_matches


def wide_records(children: int = 250) -> list[SpanRecord]:
    records = [record(1, "root", parent=None, duration_ms=10_000)]
    records.append(record(2, "batch", duration_ms=9_000, **{"ag.type.node": "agent"}))
    for index in range(children):
        model = "gpt-4o" if index % 50 == 7 else "gpt-4o-mini"
        records.append(
            record(
                3 + index,
                f"call {index}",
                parent=2,
                start_ms=index,
                **model_call(10 + index, model),
            )
        )
    return records


def wide_tree() -> TraceTree:
    return build_tree(wide_records(), 1)


def names_shown(state: TreeState) -> list[str]:
    return [row.node.name for row in state.rows() if row.kind == "span"]


def test_reveal_pages_in_the_children_down_to_the_span() -> None:
    state = TreeState(wide_tree(), page_size=100, auto_budget=1)
    target = next(node for node in state.tree.nodes if node.name == "call 230")
    assert "call 230" not in names_shown(state)
    state.reveal(target.span_id)
    shown = names_shown(state)
    assert "call 230" in shown and state.selected == target.span_id
    # Sorted by cost (the dearest first), the same span is elsewhere in its parent's list.
    state = TreeState(wide_tree(), page_size=100, auto_budget=1)
    state.set_sort("cost")
    cheapest = next(node for node in state.tree.nodes if node.name == "call 0")
    state.reveal(cheapest.span_id)
    assert "call 0" in names_shown(state)


def test_reveal_shows_the_span_with_filters_on() -> None:
    state = TreeState(wide_tree(), page_size=2, auto_budget=1)
    state.set_filter(text="gpt-4o-mini")
    target = next(node for node in state.tree.nodes if node.name == "call 201")
    state.reveal(target.span_id)
    assert "call 201" in names_shown(state)
    # A span the filters leave out is shown too, until the filters change.
    state.set_filter(text="call 1")
    outside = next(node for node in state.tree.nodes if node.name == "call 207")
    assert not state.matches(outside)
    state.reveal(outside.span_id)
    assert "call 207" in names_shown(state) and state.selected == outside.span_id
    state.set_filter(text="call 1")
    assert "call 207" not in names_shown(state)


def test_the_view_controls_filter_and_show_a_bad_value() -> None:
    trace = Trace(1, "root", root_span_id=1, records=rich_records())
    view = TraceView(trace)
    try:

        def shown() -> list[str]:
            return [row.node.name for row, _label, _line in view.visible if row.kind == "span"]

        assert len(shown()) == 7
        view.toggle_options()
        view.text_control.value = "lisbon"
        assert shown() == ["root", "chat"]
        view.text_control.value = ""
        view.min_cost_control.value = "abc"  # no exception in the kernel
        border = view.min_cost_control.layout.border
        assert border and "solid" in border
        assert "abc" in view.min_cost_control.tooltip
        assert view.state.min_cost is None and len(shown()) == 7
        view.min_duration_control.value = "0.5s"
        assert view.state.min_duration_ms == 500.0
        view.min_cost_control.value = "0"
        assert not view.min_cost_control.layout.border
        assert view.state.min_cost is None
        view.min_cost_control.value = "$100"
        assert view.state.nothing_matches and shown() == ["root"]
        assert "no span matches the filters" in view.status.value
        view.min_cost_control.value = ""
        view.min_duration_control.value = ""
        assert len(shown()) == 7
        assert view.state.waterfall_scope == "trace"
        view.scope_control.value = "parent"
        assert view.state.waterfall_scope == "parent"
    finally:
        view.close()


def test_a_jump_from_the_costliest_list_shows_a_span_past_the_first_page() -> None:
    trace = Trace(1, "root", root_span_id=1, records=wide_records())
    view = TraceView(trace, page_size=100)
    try:
        dearest = max(
            (node for node in trace.tree.nodes if node.usage.is_model_call),
            key=lambda node: node.subtotal.cost or 0,
        )
        assert dearest.name == "call 207"  # past the first page of "batch"
        shown = [row.node.span_id for row, _label, _line in view.visible if row.kind == "span"]
        assert dearest.span_id not in shown
        view.jump_to(0)
        shown = [row.node.span_id for row, _label, _line in view.visible if row.kind == "span"]
        assert dearest.span_id in shown and view.state.selected == dearest.span_id
    finally:
        view.close()


def test_the_bars_control_draws_them_against_the_parent() -> None:
    trace = Trace(1, "root", root_span_id=1, records=wide_records(5))
    view = TraceView(trace)
    try:
        before = {row.node.name: line for row, _label, line in view.visible}
        view.scope_control.value = "parent"
        assert view.state.waterfall_scope == "parent"
        after = {row.node.name: line for row, _label, line in view.visible}
        assert after["call 3"] != before["call 3"]
        view.scope_control.value = "trace"
        assert {row.node.name: line for row, _label, line in view.visible} == before
    finally:
        view.close()


# -- the search's memory --------------------------------------------------------------------


def big_records(spans: int = 600) -> list[SpanRecord]:
    """Spans of almost `SEARCH_SPAN_CHARS` characters each, every tenth with a needle at the
    end of its text: more than 11M characters for the search to read in all."""
    text = "x" * (SEARCH_SPAN_CHARS - 1_000)
    found = [record(1, "root", parent=None)]
    for index in range(spans):
        value = text + (" needle" if index % 10 == 0 else "")
        found.append(record(index + 2, f"call {index}", **{"output.value": value}))
    return found


def test_the_search_cache_stays_within_its_bound() -> None:
    records = big_records()
    state = TreeState(build_tree(records, 1))
    state.set_filter(text="needle")
    expected = [f"call {index}" for index in range(0, 600, 10)]
    assert matching(state) == expected
    assert 0 < state.search_cache_chars <= SEARCH_CACHE_CHARS <= 8_000_000
    state.set_filter(text="NEEDLE")  # again: the spans kept and the ones not, the same answer
    assert matching(state) == expected
    assert state.search_cache_chars <= SEARCH_CACHE_CHARS


def test_closing_a_view_releases_its_search_cache() -> None:
    view = TraceView(Trace(1, "root", root_span_id=1, records=big_records(50)))
    try:
        view.state.set_filter(text="needle")
        view.state.rows()
        assert view.state.search_cache_chars > 0
    finally:
        view.close()
    assert view.state.search_cache_chars == 0
    view.state.set_filter(text="needle")  # a closed view's state still answers
    assert matching(view.state)[:2] == ["call 0", "call 10"]


# -- clock skew in the waterfall ------------------------------------------------------------


def test_waterfall_tooltips_of_skewed_spans() -> None:
    """A span ending before it starts lasts 0 (text and bar); one starting before the
    trace reads "-X", never "+-X"."""
    records = [
        record(1, "root", parent=None, duration_ms=100),
        record(2, "backwards", start_ms=50, duration_ms=-10),
        record(3, "early", start_ms=-5, duration_ms=20),
    ]
    trace = Trace(1, "root", root_span_id=1, records=records)
    scale = view_scale(trace.tree.root, trace.nodes)
    backwards = waterfall_bar(trace.find("backwards"), scale)
    assert backwards.title == "starts at +50 ms · lasts 0.00 ms"
    assert backwards.width == 0
    early = waterfall_bar(trace.find("early"), scale)
    assert early.title == "starts at -5 ms · lasts 20 ms"
    against_parent = waterfall_bar(trace.find("early"), scale, "parent")
    assert against_parent.title.endswith("(-5 ms into its parent)")
    for node in trace.nodes:
        for scope in ("trace", "parent"):
            cell = waterfall_html(node, scale, scope)
            assert "+-" not in cell and "lasts -" not in cell and "width:-" not in cell
