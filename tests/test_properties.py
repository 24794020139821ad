"""Property-based tests of the roll-up (hypothesis): random trees, random usages (some bad,
some unpriced, some claims) and random arrival orders."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenta_notebook.core.fields import FIGURE_FIELDS, TOKEN_FIGURES
from agenta_notebook.core.rollup import SpanNode, SpanRecord, TraceTree, build_tree
from agenta_notebook.live import Trace

TRACE_ID = 0x5EED
MISSING_PARENT = 0xFFFF_FFFF  # a parent that is not in the trace: detached

TYPES = [None, "llm", "chat", "embedding", "agent", "chain", "tool", "workflow"]
MODELS = [None, "gpt-4o", "gpt-4o-mini", "my-local-llama", "claude-3-5-sonnet-latest"]
BAD_VALUES: list[Any] = ["abc", -5, float("nan"), float("inf"), True, "", -0.25, [1, 2]]
TOKEN_KEYS = [
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "llm.token_count.total",
    "ag.metrics.unit.tokens.prompt",
    "ag.metrics.unit.tokens.completion",
    "gen_ai.usage.cache_read.input_tokens",
    "llm.token_count.completion_details.reasoning",
]
COST_KEYS = ["ag.metrics.unit.costs.total", "llm.cost.total"]

token_values = st.one_of(
    st.integers(min_value=0, max_value=2_000_000),
    st.sampled_from(BAD_VALUES),
    st.integers(min_value=0, max_value=10_000).map(str),
)
cost_values = st.one_of(
    st.decimals(min_value=0, max_value=Decimal("1e6"), allow_nan=False, allow_infinity=False).map(
        str
    ),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.just(0),
    st.sampled_from(BAD_VALUES),
)


@st.composite
def attributes(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {}
    span_type = draw(st.sampled_from(TYPES))
    if span_type is not None:
        result["ag.type.node"] = span_type
    for key in draw(st.lists(st.sampled_from(TOKEN_KEYS), unique=True, max_size=4)):
        result[key] = draw(token_values)
    if draw(st.integers(0, 3)) == 0:
        result[draw(st.sampled_from(COST_KEYS))] = draw(cost_values)
    model = draw(st.sampled_from(MODELS))
    if model is not None:
        result["gen_ai.request.model"] = model
    return result


@dataclass(frozen=True)
class Case:
    records: list[SpanRecord]
    arrival: list[SpanRecord]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    count = draw(st.integers(min_value=1, max_value=30))
    records: list[SpanRecord] = []
    for index in range(count):
        span_id = index + 1
        if index == 0:
            parent: int | None = None
        elif draw(st.integers(0, 15)) == 0:
            parent = MISSING_PARENT
        else:
            parent = draw(st.integers(min_value=1, max_value=index))
        start = draw(st.integers(min_value=0, max_value=50))  # ties happen, on purpose
        running = draw(st.integers(0, 10)) == 0
        records.append(
            SpanRecord(
                trace_id=TRACE_ID,
                span_id=span_id,
                parent_span_id=parent,
                name=f"span {span_id}",
                start_time_ns=start,
                end_time_ns=None if running else start + draw(st.integers(0, 100)),
                status=draw(st.sampled_from(["UNSET", "OK", "ERROR"])),
                attributes=draw(attributes()),
            )
        )
    arrival = draw(st.permutations(records))
    return Case(records, list(arrival))


def exact_sum(tree: TraceTree, field: str) -> int | Decimal | None:
    """The sum of one counted own figure over every node, with no rounding at all."""
    values = [getattr(node.own, field) for node in tree.nodes]
    known = [value for value in values if value is not None]
    if not known:
        return None
    with localcontext(prec=400):
        return sum(known, Decimal(0) if field == "cost" else 0)


def shape(tree: TraceTree) -> list[tuple[Any, ...]]:
    return [
        (
            node.span_id,
            node.parent.span_id if node.parent else None,
            node.depth,
            node.role,
            node.own,
            node.subtotal,
            node.detached,
            node.is_error_origin,
            node.warnings,
        )
        for node in tree.nodes
    ]


def descendants_report(node: SpanNode) -> bool:
    return any(d.usage.reports_usage for d in node.walk() if d is not node)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_root_is_the_exact_sum_and_order_does_not_matter(case: Case) -> None:
    tree = build_tree(case.records)
    totals = tree.totals

    # the root's subtotal equals the sum of the counted own figures, exactly (rule 12);
    # unpriced calls are not a sum: a cost above them prices them (revised rule 2)
    for field in FIGURE_FIELDS:
        if field == "unpriced_calls":
            continue
        assert getattr(totals, field) == exact_sum(tree, field), field

    # every span appears exactly once, and the tree's links agree with each other
    ids = [node.span_id for node in tree.nodes if not node.synthetic]
    assert sorted(ids) == sorted(record.span_id for record in case.records)
    assert len({id(node) for node in tree.nodes}) == len(tree.nodes)
    for node in tree.nodes:
        for child in node.children:
            assert child.parent is node and child.depth == node.depth + 1
    assert sum(len(node.children) for node in tree.nodes) == len(tree.nodes) - 1

    # rule 1 at every node (a span whose own cost prices the unpriced calls below it
    # clears their unpriced count: revised rule 2)
    for node in tree.nodes:
        for field in FIGURE_FIELDS:
            parts = [getattr(node.own, field)] + [
                getattr(child.subtotal, field) for child in node.children
            ]
            known = [part for part in parts if part is not None]
            with localcontext(prec=400):
                expected = sum(known, Decimal(0) if field == "cost" else 0) if known else None
            if field == "unpriced_calls" and node.own.cost is not None and not node.own.model_calls:
                expected = 0
            assert getattr(node.subtotal, field) == expected

    # rules 2 and 3, checked against the tree's shape rather than the code's own flags:
    # each figure counts at the lowest span that reports it, and the model calls are the
    # lowest model-call spans
    for node in tree.nodes:
        usage = node.usage
        below = [d for d in node.walk() if d is not node]
        reported_below = 0
        for d in below:
            reported_below |= d.usage.reported_fields
        call_below = any(d.usage.is_model_call for d in below)
        assert node.own.model_calls == (1 if usage.is_model_call and not call_below else 0)
        if usage.is_model_call and call_below:
            assert node.role == "model call wrapper"
        for figure in TOKEN_FIGURES:
            field, bit, value = figure.name, figure.bit, getattr(usage, figure.name)
            if field == "total_tokens" and value is None:  # rule 5: else input + output
                stated = [v for v in (usage.input_tokens, usage.output_tokens) if v is not None]
                value = sum(stated) if stated else None
            counted_here = usage.reported_fields & bit and not reported_below & bit
            assert getattr(node.own, field) == (value if counted_here else None), field
        if not usage.reports_usage and not usage.is_model_call:
            assert node.own.total_tokens is None and node.own.cost is None
            assert node.own.model_calls == node.own.unpriced_calls == 0
        # rule 8: an origin is an error with no failing child
        assert node.is_error_origin == (
            node.record.status == "ERROR"
            and not any(child.record.status == "ERROR" for child in node.children)
        )

    # the order of arrival changes nothing (rule 11)
    assert shape(build_tree(case.arrival)) == shape(tree)


@settings(max_examples=40, deadline=None)
@given(cases())
def test_a_live_trace_fed_in_any_order_ends_where_a_batch_build_does(case: Case) -> None:
    live = Trace(TRACE_ID, "live", root_span_id=case.records[0].span_id)
    for index, record in enumerate(case.arrival):
        live.add_records([record])
        if index % 3 == 0:
            live.tree  # noqa: B018 - a view reading the tree between arrivals
    assert shape(live.tree) == shape(build_tree(case.records, case.records[0].span_id))
