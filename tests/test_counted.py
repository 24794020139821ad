"""The roll-up over the spans that count (core/columns.py, `Trace.counted`): for any
finished trace it gives what the whole tree gives (totals, per-model figures, warnings,
budget, every counted node's figures and place), and its DataFrame is the whole tree's,
row for row; what it cannot place exactly, it leaves to the whole tree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agenta_notebook as an
from agenta_notebook.budget import BUDGET_DOLLARS, trace_budget
from agenta_notebook.core.columns import count_spans, most_levels, shape_of
from agenta_notebook.core.pricing import NO_USER_PRICES
from agenta_notebook.core.rollup import SpanEvent, SpanRecord, build_tree, split_record
from agenta_notebook.io.frame import spans_of_traces, trace_dataframe
from agenta_notebook.io.ledger import CellSpend, rows_of
from agenta_notebook.live import Trace

TRACE_ID = 0x5EED
ROOT = 7
MISSING = 0xDEAD
SCOPES = ["openinference.instrumentation.openai", "opentelemetry.instrumentation.langchain"]


@st.composite
def attributes_of(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly spans that state nothing (no attributes, or a type that is no model call's);
    some that state usage, a cost, a model call with nothing else, a bad value."""
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return {}
    if kind <= 5:
        return {"ag.type.node": draw(st.sampled_from(["tool", "agent", "workflow", "task"]))}
    attributes: dict[str, Any] = {"ag.type.node": draw(st.sampled_from(["llm", "chat", "agent"]))}
    if kind >= 7:
        attributes["gen_ai.usage.input_tokens"] = draw(st.sampled_from([10, 20]))
        attributes["gen_ai.usage.output_tokens"] = draw(st.sampled_from([5, 7]))
        attributes["gen_ai.request.model"] = draw(st.sampled_from(["gpt-4o", "my-own-llm"]))
    if kind == 9 and draw(st.booleans()):
        attributes["ag.metrics.unit.costs.total"] = draw(st.sampled_from(["0.5", "x"]))
    return attributes


@st.composite
def traces(draw: st.DrawFn) -> list[SpanRecord]:
    """A trace: a root span, and spans under earlier ones (some detached, some a second
    top-level span, some failed or with an exception event, some still running, some a
    second recording of an earlier call by another scope); starts tie on purpose."""
    count = draw(st.integers(1, 40))
    # ids in no order (siblings that start together are ordered by id), some past 2**63
    base = draw(st.sampled_from([0, 0, 2**63 - 60, 2**64 - 200]))
    ids = [ROOT, *(base + ROOT + 3 * n for n in draw(st.permutations(range(1, count))))]
    records: list[SpanRecord] = []
    for index, span_id in enumerate(ids):
        if index == 0:
            parent: int | None = None
        elif draw(st.integers(0, 25)) == 0:
            parent = MISSING
        elif draw(st.integers(0, 40)) == 0:
            parent = None
        else:
            parent = records[draw(st.integers(0, index - 1))].span_id
        start = draw(st.integers(-5, 30))
        end: int | None = start + draw(st.integers(0, 50))
        if index and draw(st.integers(0, 15)) == 0:
            end = None  # still running (a record: given as it was read)
        attributes = draw(attributes_of())
        scope = SCOPES[0]
        if index and draw(st.integers(0, 6)) == 0:  # rule 13: one call, two recorders
            twin = records[draw(st.integers(0, index - 1))]
            attributes, parent = dict(twin.attributes), twin.parent_span_id
            start, end, scope = twin.start_time_ns, twin.end_time_ns, SCOPES[1]
        events: tuple[SpanEvent, ...] = ()
        if draw(st.integers(0, 12)) == 0:
            events = (SpanEvent("exception", start, {"exception.type": "ValueError"}),)
        records.append(
            SpanRecord(
                trace_id=TRACE_ID,
                span_id=span_id,
                parent_span_id=parent,
                name=f"span {index}",
                start_time_ns=start,
                end_time_ns=end,
                status=draw(st.sampled_from(["UNSET", "UNSET", "UNSET", "OK", "ERROR"])),
                attributes=attributes,
                events=events,
                scope=scope,
            )
        )
    return records


def finished_trace(records: list[SpanRecord]) -> Trace:
    """A trace of `records` (a span of them may still run: a record read while it ran),
    read from its spans that count however few it has."""
    trace = Trace(TRACE_ID, "counted", root_span_id=ROOT, records=records)
    trace.counted_from = 0
    return trace


def node_facts(node: Any) -> tuple[Any, ...]:
    parent = node.parent
    return (
        None if parent is None else parent.span_id,
        node.depth,
        node.own,
        node.subtotal,
        node.role,
        node.is_error_origin,
        node.detached,
        node.span_warnings,
        node.priced,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_the_spans_that_count_give_the_whole_trees_figures_and_frame(
    records: list[SpanRecord],
) -> None:
    whole = build_tree(records, ROOT, name="counted")
    trace = finished_trace(records)
    counted = trace.counted()
    assert counted is not None
    tree = counted.tree
    assert tree.totals == whole.totals
    assert tree.by_model() == whole.by_model()
    assert tree.warnings() == whole.warnings()
    # each span that counts is as the whole tree has it; every other has nothing at all
    for node in tree.nodes:
        assert node_facts(node) == node_facts(whole.by_id[node.span_id])
    kept = {node.span_id for node in tree.nodes}
    for node in whole.nodes:
        if node.span_id not in kept:
            assert node.subtotal.model_calls == 0 and node.subtotal.errors == 0
            assert node.subtotal.total_tokens is None and node.subtotal.cost is None
            assert node.role == "none" and not node.span_warnings and not node.detached
            assert not node.running
    # every span's place, as the whole tree links it
    place = {record.span_id: index for index, record in enumerate(records)}
    shape = counted.shape
    for row, node in enumerate(whole.nodes):
        at = place[node.span_id]
        assert shape.position[at] == row
        assert shape.depth[at] == node.depth
        assert shape.detached[at] == node.detached
        parent = shape.parent[at]
        assert (None if parent < 0 else records[parent].span_id) == (
            None if node.parent is None else node.parent.span_id
        )
    # the DataFrame from the spans that count and the columns is the whole tree's
    frame = trace_dataframe(trace)
    assert trace.counted() is counted  # nothing built the whole tree
    built = finished_trace(records)
    assert built.tree.size == whole.size  # the whole tree built: its frame reads nodes
    assert built.counted() is None
    pd.testing.assert_frame_equal(frame, trace_dataframe(built))


def plain_records(count: int) -> list[SpanRecord]:
    """A root over `count` spans that state nothing, one of them over a model call."""
    records = [SpanRecord(TRACE_ID, ROOT, None, "root", 0, 1_000)]
    for index in range(count):
        records.append(SpanRecord(TRACE_ID, 100 + index, ROOT, f"step {index}", index, index + 1))
    records.append(
        SpanRecord(
            TRACE_ID,
            99,
            100,
            "call",
            0,
            1,
            attributes={
                "ag.type.node": "llm",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 1_000,
                "gen_ai.usage.output_tokens": 100,
            },
        )
    )
    return records


def test_only_the_spans_that_state_something_and_their_ancestors_get_a_node() -> None:
    trace = finished_trace(plain_records(50))
    counted = trace.counted()
    assert counted is not None and counted.size == 52
    assert [node.name for node in counted.tree.nodes] == ["root", "step 0", "call"]
    assert counted.tree.totals.input_tokens == 1_000
    assert counted.tree.totals.cost is not None and counted.tree.totals.cost > 0
    assert trace.counted_tree() is counted.tree
    assert trace.counted() is counted  # kept while the trace does not change


def test_a_new_span_or_the_whole_tree_replaces_the_counted_one() -> None:
    trace = finished_trace(plain_records(5))
    first = trace.counted()
    assert first is not None
    trace.add_records([SpanRecord(TRACE_ID, 500, 101, "late", 2, 3)])
    second = trace.counted()
    assert second is not None and second is not first and second.size == first.size + 1
    tree = trace.tree
    assert trace.counted() is None  # the whole tree is built: read it
    assert trace.counted_tree() is tree


def test_a_running_span_counts() -> None:
    records = [*plain_records(2), SpanRecord(TRACE_ID, 700, 101, "running", 5, None)]
    counted = finished_trace(records).counted()
    assert counted is not None
    assert [node.name for node in counted.tree.nodes] == [
        "root",
        "step 0",
        "call",
        "step 1",
        "running",
    ]
    assert counted.tree.running_count == 1


def test_what_cannot_be_placed_exactly_is_left_to_the_whole_tree() -> None:
    rows = [split_record(record)[0] for record in plain_records(3)]
    attributes = [record.attributes for record in plain_records(3)]
    assert count_spans(rows, attributes, 0, name="t", user_prices=NO_USER_PRICES) is not None
    step = rows[1]

    def changed(**fields: Any) -> Any:
        """`step` with other values in some of its fields."""
        places = {"span_id": 1, "parent": 2, "start": 4}
        row = list(step)
        for field, value in fields.items():
            row[places[field]] = value
        return tuple(row)

    # a parent cycle (two spans under each other, away from the root)
    assert (
        shape_of([*rows, changed(span_id=600, parent=601), changed(span_id=601, parent=600)], 0)
        is None
    )
    # one span twice; an id past 64 bits; a start that is no int
    assert shape_of([*rows, step], 0) is None
    assert shape_of([*rows, changed(span_id=2**64)], 0) is None
    assert shape_of([*rows, changed(span_id=601, start=None)], 0) is None
    assert shape_of([*rows, changed(span_id=601)], 0) is not None
    # a trace without its root span, or made of records alone: no counted tree
    rootless = Trace(TRACE_ID, "t", root_span_id=ROOT, records=plain_records(2)[1:])
    rootless.counted_from = 0
    assert rootless.counted() is None
    records_only = Trace(TRACE_ID, "t", records=plain_records(2))
    records_only.counted_from = 0
    assert records_only.counted() is None
    assert records_only.counted_tree() is records_only.tree


def chain_and_steps(length: int, total: int) -> list[SpanRecord]:
    """A root over a chain of `length` spans (each under the one before, a model call at
    its bottom) and as many steps beside it as make `total` spans."""
    records = [SpanRecord(TRACE_ID, ROOT, None, "root", 0, 1_000_000)]
    model_call = plain_records(0)[-1].attributes
    parent = ROOT
    for link in range(length):
        bottom = link == length - 1
        records.append(
            SpanRecord(
                TRACE_ID,
                1_000 + link,
                parent,
                "call" if bottom else f"link {link}",
                link,
                link + 10,
                attributes=model_call if bottom else {},
            )
        )
        parent = 1_000 + link
    for step in range(total - len(records)):
        records.append(SpanRecord(TRACE_ID, 100_000 + step, ROOT, f"step {step}", step, step + 1))
    return records


def test_a_trace_deeper_than_its_spans_allow_is_left_to_the_whole_tree() -> None:
    # 2,000 spans: placed down to 125 levels below the root (a sixteenth of them)
    assert most_levels(2_000) == 125
    for length, placed in ((125, True), (126, False)):
        records = chain_and_steps(length, 2_000)
        assert len(records) == 2_000
        rows = [split_record(record)[0] for record in records]
        assert (shape_of(rows, 0) is not None) is placed
        trace = finished_trace(records)
        counted = trace.counted()
        assert (counted is not None) is placed
        if counted is not None:
            assert int(counted.shape.depth.max()) == length
        frame = trace_dataframe(trace)
        built = finished_trace(records)
        assert built.tree.size == len(records)  # the whole tree: its frame reads nodes
        pd.testing.assert_frame_equal(frame, trace_dataframe(built))
        assert int(frame["depth"].max()) == length
    # however few the spans, a trace 64 levels deep is placed, 65 is not
    assert most_levels(200) == 64
    for length, placed in ((64, True), (65, False)):
        rows = [split_record(record)[0] for record in chain_and_steps(length, 200)]
        assert (shape_of(rows, 0) is not None) is placed


def test_a_time_past_int64_arithmetic_makes_the_frame_from_the_whole_tree() -> None:
    records = plain_records(3)
    records[2] = SpanRecord(TRACE_ID, 101, ROOT, "far", 2**62, 2**62 + 5)
    trace = finished_trace(records)
    assert trace.counted() is not None
    frame = trace_dataframe(trace)
    built = finished_trace(records)
    built.tree  # noqa: B018
    pd.testing.assert_frame_equal(frame, trace_dataframe(built))


def test_traces_counted_and_built_in_one_frame() -> None:
    counted = finished_trace(plain_records(4))
    other = Trace(TRACE_ID + 1, "built", root_span_id=ROOT, records=plain_records(6))
    other.counted_from = 0
    other.tree  # noqa: B018 - built: its rows come from its nodes
    assert counted.counted() is not None and other.counted() is None
    frame = spans_of_traces([counted, other, counted])
    alone = [trace_dataframe(trace) for trace in (counted, other, counted)]
    pd.testing.assert_frame_equal(frame, pd.concat(alone, ignore_index=True))
    counted_names = ["root", "step 0", "call", "step 1", "step 2", "step 3"]
    built_names = ["root", "step 0", "call", *(f"step {n}" for n in range(1, 6))]
    assert frame["name"].tolist() == [*counted_names, *built_names, *counted_names]
    assert frame["depth"].tolist()[:6] == [0, 1, 2, 1, 1, 1]
    assert frame["trace_name"].tolist() == ["counted"] * 6 + ["built"] * 8 + ["counted"] * 6


def test_the_ledger_reads_the_same_figures_from_the_counted_tree(tmp_path: Any) -> None:
    records = plain_records(8)
    records[0] = SpanRecord(
        TRACE_ID, ROOT, None, "root", 0, 1_000, attributes={BUDGET_DOLLARS: "0.001"}
    )
    counted = finished_trace(records)
    built = finished_trace(records)
    built.tree  # noqa: B018

    def spend(trace: Trace) -> list[tuple[Any, ...]]:
        return rows_of(CellSpend(tmp_path / "ledger.db", trace, 1.0, None, None, None))

    assert counted.counted() is not None
    assert spend(counted) == spend(built)
    assert trace_budget(counted.counted_tree()) == trace_budget(built.tree)
    assert trace_budget(built.tree) is not None and trace_budget(built.tree).reached  # type: ignore[union-attr]


def test_a_traced_block_is_counted_and_its_frame_is_the_whole_trees() -> None:
    with an.trace("block") as trace:
        for index in range(30):
            with an.span("step", type="tool"), an.span("inner"):
                if index % 10 == 0:
                    with an.span("call", type="llm"):
                        an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=3)
    assert trace.counted() is None  # 64 spans: fewer than `COUNTED_FROM`, the whole tree
    trace.counted_from = 65
    assert trace.counted() is None
    trace.counted_from = 64  # from this many spans on
    counted = trace.counted()
    assert counted is not None and counted.size == 64 and counted.tree.size == 10
    frame = trace_dataframe(trace)
    assert trace.counted() is counted
    whole = build_tree(trace.records(), trace.root_span_id, name="block")
    assert frame["subtotal_total_tokens"].iloc[0] == whole.totals.total_tokens == 39
    assert frame["span_id"].tolist() == [f"{node.span_id:016x}" for node in whole.nodes]
    assert frame["subtotal_cost"].iloc[0] == pytest.approx(float(whole.totals.cost or 0))


def test_a_kept_tree_is_folded_rather_than_counted_again() -> None:
    trace = finished_trace(plain_records(5))
    assert trace.totals.input_tokens == 1_000  # a budget's read: the tree is kept, folded
    trace.add_records(
        [
            SpanRecord(
                TRACE_ID,
                800,
                104,
                "late call",
                4,
                5,
                attributes={"ag.type.node": "llm", "gen_ai.usage.input_tokens": 5},
            )
        ]
    )
    assert trace.counted() is None
    assert trace.counted_tree().totals.input_tokens == 1_005


def test_new_prices_count_again() -> None:
    trace = finished_trace(plain_records(3))
    first = trace.counted()
    assert first is not None and first.tree.totals.cost is not None
    an.set_prices("gpt-4o", input=1, output=1)  # dollars per million tokens
    try:
        again = trace.counted()
        assert again is not None and again is not first
        assert again.tree.totals.cost == Decimal("0.0011")  # 1,100 tokens at $1 a million
    finally:
        an.clear_prices()


def frames_agree(records: list[SpanRecord], *, counted: bool = True) -> None:
    """The frame of a trace of `records` read first equals its whole tree's frame; with
    `counted`, it was read from the spans that count."""
    trace = finished_trace(records)
    assert (trace.counted() is not None) is counted
    frame = trace_dataframe(trace)
    built = finished_trace(records)
    built.tree  # noqa: B018 - the whole tree: its frame reads nodes
    pd.testing.assert_frame_equal(frame, trace_dataframe(built))


def test_times_and_ids_that_are_not_ints_are_left_to_the_whole_tree() -> None:
    # numpy would take 1.7 and 1.2 as 1, and order these two by id
    frames_agree(
        [
            SpanRecord(TRACE_ID, ROOT, None, "root", 0, 100),
            SpanRecord(TRACE_ID, 10, ROOT, "a", 1.7, 3),  # type: ignore[arg-type]
            SpanRecord(TRACE_ID, 11, ROOT, "b", 1.2, 3),  # type: ignore[arg-type]
        ],
        counted=False,
    )
    # an end that is no int, on a span that states nothing
    frames_agree([*plain_records(2), SpanRecord(TRACE_ID, 12, ROOT, "c", 1, 2.5)])  # type: ignore[arg-type]
    # a parent id "7" is not span 7 (the whole tree marks the span detached)
    rows = [split_record(record)[0] for record in plain_records(2)]
    with_text_parent = (*rows[1][:2], str(ROOT), *rows[1][3:])
    assert shape_of([rows[0], with_text_parent], 0) is None


def test_a_span_from_before_to_after_int64_arithmetic_is_left_to_the_whole_tree() -> None:
    frames_agree(
        [*plain_records(2), SpanRecord(TRACE_ID, 12, ROOT, "wide", -(2**62) - 10, 2**62 + 10)]
    )


def test_sums_past_int64_keep_exact_ints_and_nulls_in_the_frame() -> None:
    big = 2**62 + 2**61  # each fits int64; their sum does not
    calls = [
        SpanRecord(
            TRACE_ID,
            200 + index,
            ROOT,
            f"call {index}",
            index,
            index + 1,
            attributes={"ag.type.node": "llm", "gen_ai.usage.input_tokens": big},
        )
        for index in range(2)
    ]
    frames_agree(
        [
            SpanRecord(TRACE_ID, ROOT, None, "root", 0, 10),
            *calls,
            SpanRecord(TRACE_ID, 300, ROOT, "tool", 5, 6),
        ]
    )


def test_a_root_under_another_span_of_its_trace() -> None:
    frames_agree(
        [
            SpanRecord(TRACE_ID, ROOT, 50, "root", 0, 100),
            SpanRecord(TRACE_ID, 50, None, "outside", 0, 200),
            SpanRecord(TRACE_ID, 51, ROOT, "step", 1, 2),
        ]
    )


def test_a_span_still_open_in_the_sdk_leaves_the_trace_to_its_whole_tree() -> None:
    trace = finished_trace(plain_records(3))
    trace.span_started(900, object())  # a thread's span, open after the block ended
    assert trace.counted() is None


def test_the_traces_table_reads_the_spans_that_count() -> None:
    records = plain_records(6)
    records[0] = SpanRecord(
        TRACE_ID, ROOT, None, "root", 0, 1_000, attributes={BUDGET_DOLLARS: "0.001"}
    )
    records.append(SpanRecord(TRACE_ID, 700, 102, "running", 5, None))
    counted = finished_trace(records)
    built = finished_trace(records)
    built.tree  # noqa: B018 - the whole tree: its row reads it
    table = an.traces_dataframe(counted)
    assert counted.counted() is not None  # no whole tree was built for the table
    pd.testing.assert_frame_equal(table, an.traces_dataframe(built))
    row = table.iloc[0]
    assert row["spans"] == 9 and row["running"] and row["input_tokens"] == 1_000
    assert row["budget_reached"]
