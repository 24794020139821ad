"""The roll-up rules of docs/rollup.md, one test group per numbered rule,
and every listed case, on hand-made records (`build_tree`) and on real spans."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, localcontext
from typing import Any

import pytest
from conftest import RecordFactory, keys
from opentelemetry import trace as otel_trace

import agenta_notebook as an
from agenta_notebook.core.fields import FIGURE_FIELDS
from agenta_notebook.core.pricing import NO_USER_PRICES, calculate_cost, parse_prices
from agenta_notebook.core.rollup import Figures, SpanNode, TraceTree, build_tree

# --- helpers ------------------------------------------------------------------------------


def genai(
    input: Any = None, output: Any = None, total: Any = None, model: str | None = None
) -> dict[str, Any]:
    """Attributes in the OpenTelemetry GenAI vocabulary."""
    attributes: dict[str, Any] = {}
    if input is not None:
        attributes["gen_ai.usage.input_tokens"] = input
    if output is not None:
        attributes["gen_ai.usage.output_tokens"] = output
    if total is not None:
        attributes["gen_ai.usage.total_tokens"] = total
    if model is not None:
        attributes["gen_ai.request.model"] = model
    return attributes


def node(tree: TraceTree, name: str) -> SpanNode:
    matches = [node for node in tree.nodes if node.name == name]
    assert len(matches) == 1, f"expected one span named {name!r}, got {len(matches)}"
    return matches[0]


def check_rule_1(tree: TraceTree) -> None:
    """subtotal == counted own + sum of the children's subtotals, at every node."""
    for each in tree.nodes:
        for field in FIGURE_FIELDS:
            parts = [getattr(each.own, field)] + [
                getattr(child.subtotal, field) for child in each.children
            ]
            known = [part for part in parts if part is not None]
            with localcontext(prec=200):  # no rounding in the reference sum
                expected = sum(known, Decimal(0) if field == "cost" else 0) if known else None
            assert getattr(each.subtotal, field) == expected, (each.name, field)


def own_sum(tree: TraceTree) -> Figures:
    total = Figures()
    for each in tree.nodes:
        total = total + each.own
    return total


# --- rule 1: subtotal = counted own + children ------------------------------------------


def test_rule_1_every_figure_is_own_plus_children(records: RecordFactory) -> None:
    root = records.add("root", type="workflow")
    chain = records.add("chain", root, type="chain")
    records.add(
        "first",
        chain,
        type="llm",
        **keys(
            {
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 30,
                "gen_ai.usage.cache_read.input_tokens": 40,
                "gen_ai.usage.cache_creation.input_tokens": 10,
                "gen_ai.usage.reasoning.output_tokens": 12,
                "llm.cost.total": 0.25,
            }
        ),
    )
    records.add("second", chain, type="chat", **genai(7, 3), **keys({"llm.cost.total": "0.5"}))
    records.add("tool", root, type="tool", status="ERROR")
    tree = build_tree(records.all)
    check_rule_1(tree)
    chain_subtotal = node(tree, "chain").subtotal
    assert (chain_subtotal.input_tokens, chain_subtotal.output_tokens) == (107, 33)
    assert chain_subtotal.total_tokens == 140
    assert chain_subtotal.cache_read_tokens == 40
    assert chain_subtotal.cache_write_tokens == 10
    assert chain_subtotal.reasoning_tokens == 12
    assert chain_subtotal.cost == Decimal("0.75")
    assert chain_subtotal.model_calls == 2
    assert tree.totals.errors == 1 and tree.totals.model_calls == 2
    assert tree.totals.cost == Decimal("0.75")


# --- rule 2: a model call's own usage always counts --------------------------------------


def test_rule_2_llm_50_over_llm_20_counts_the_lower_layer(records: RecordFactory) -> None:
    # Revised rule 2: usage counts at the lowest layer that reports it; the outer model
    # call is a wrapper (rule 3) whose differing claim is flagged.
    root = records.add("root")
    outer = records.add("outer", root, type="llm", **genai(total=50))
    records.add("inner", outer, type="llm", **genai(total=20))
    tree = build_tree(records.all)
    assert node(tree, "outer").subtotal.total_tokens == 20
    assert tree.totals.total_tokens == 20
    assert tree.totals.model_calls == 1
    assert node(tree, "outer").role == "model call wrapper"
    assert node(tree, "outer").mismatch == (
        "roll-up mismatch: this span claims total tokens 50 vs 20 summed below"
    )


def test_rule_2_with_real_spans() -> None:
    with an.trace("nested calls") as result:
        with an.span("outer", type="llm"):
            an.record_usage(total_tokens=20)
            with an.span("inner", type="llm"):
                an.record_usage(total_tokens=20)
    assert result.find("outer").subtotal.total_tokens == 20
    assert result.totals.total_tokens == 20
    assert result.totals.model_calls == 1
    assert result.find("outer").mismatch is None


def test_rule_2_openinference_and_genai_operation_mark_model_calls(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    kind = records.add(
        "kind", root, **keys({"openinference.span.kind": "LLM", "llm.token_count.total": 5})
    )
    records.add("operation", kind, **keys({"gen_ai.operation.name": "chat", **genai(3, 4)}))
    tree = build_tree(records.all)
    assert node(tree, "kind").usage.is_model_call
    assert node(tree, "operation").usage.is_model_call
    assert tree.totals.total_tokens == 7  # the lower layer's 3 + 4; the 5 above is a claim
    assert tree.totals.model_calls == 1
    assert node(tree, "kind").mismatch is not None


# --- rule 3: claims ---------------------------------------------------------------------


def test_rule_3_agent_claim_over_two_llm_calls_is_not_added(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **genai(total=300))
    records.add("a", agent, type="llm", **genai(total=100))
    records.add("b", agent, type="llm", **genai(total=200))
    tree = build_tree(records.all)
    assert tree.totals.total_tokens == 300  # not 600
    assert node(tree, "agent").subtotal.total_tokens == 300
    assert node(tree, "agent").role == "claim not counted"
    assert not any("mismatch" in warning for warning in node(tree, "agent").warnings)
    assert tree.totals.model_calls == 2


def test_rule_3_claim_that_differs_carries_a_mismatch_warning(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **genai(total=350))
    records.add("a", agent, type="llm", **genai(total=100))
    records.add("b", agent, type="llm", **genai(total=200))
    tree = build_tree(records.all)
    assert tree.totals.total_tokens == 300
    warnings = node(tree, "agent").warnings
    assert any("mismatch" in warning and "350" in warning for warning in warnings)
    assert any(w.span_name == "agent" and "mismatch" in w.message for w in tree.warnings())


def test_rule_3_claim_with_nothing_below_counts(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **genai(total=300))
    records.add("plan", agent, type="tool")
    tree = build_tree(records.all)
    assert tree.totals.total_tokens == 300
    assert node(tree, "agent").role == "claim counted"


def test_rule_3_claim_counts_only_once_even_when_nested(records: RecordFactory) -> None:
    # agent(300) -> chain(300) -> llm(300): the llm counts; neither claim is added.
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **genai(total=300))
    chain = records.add("chain", agent, type="chain", **genai(total=300))
    records.add("llm", chain, type="llm", **genai(total=300))
    tree = build_tree(records.all)
    assert tree.totals.total_tokens == 300
    assert node(tree, "agent").role == node(tree, "chain").role == "claim not counted"


def test_rule_3_a_claimed_cost_that_differs_is_flagged(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add(
        "agent", root, type="agent", **{"ag.metrics.unit.costs.total": 0.5}, **genai(total=300)
    )
    records.add("a", agent, type="llm", **{"ag.metrics.unit.costs.total": 0.1}, **genai(total=300))
    tree = build_tree(records.all)
    assert tree.totals.cost == Decimal("0.1")
    mismatch = node(tree, "agent").mismatch
    assert mismatch is not None and "cost 0.5 vs 0.1" in mismatch
    assert "tokens" not in mismatch, "the tokens agree"


def test_a_model_call_without_usage_over_calls_that_report_is_a_wrapper(
    records: RecordFactory,
) -> None:
    """An llm-typed function wrapping an instrumented client call (which reports): one
    model call, not two; a lone llm span with no usage is one unreported (unpriced) call."""
    root = records.add("root")
    wrapper = records.add("ask_llm", root, type="llm")
    records.add("chat", wrapper, type="llm", **genai(input=10, output=5, model="gpt-4o"))
    records.add("lonely", root, type="llm")
    tree = build_tree(records.all)
    assert node(tree, "ask_llm").role == "model call wrapper"
    assert node(tree, "ask_llm").own.model_calls == 0
    assert node(tree, "ask_llm").subtotal.model_calls == 1
    assert node(tree, "lonely").role == "unreported model call"
    assert tree.totals.model_calls == 2
    assert tree.totals.unpriced_calls == 1
    assert tree.totals.total_tokens == 15


def test_rule_3_with_real_spans_and_the_mismatch_warning() -> None:
    with an.trace("agent run") as result:
        with an.span("agent", type="agent"):
            an.record_usage(total_tokens=300)
            with an.span("first", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=80, output_tokens=20)
            with an.span("second", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=150, output_tokens=50)
        with an.span("liar", type="agent"):
            an.record_usage(total_tokens=999)
            with an.span("third", type="llm"):
                an.record_usage(total_tokens=1)
    assert result.find("agent").subtotal.total_tokens == 300
    assert result.totals.total_tokens == 301
    assert not any("mismatch" in w for w in result.find("agent").warnings)
    assert any("mismatch" in w for w in result.find("liar").warnings)
    assert any("mismatch" in w.message for w in result.summary().warnings)


# --- rule 4: tokens and cost over the same spans ----------------------------------------


def test_rule_4_cost_claim_is_not_added_when_tokens_are_reported_below(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **keys({"llm.cost.total": 1.0}))
    records.add("call", agent, type="llm", **genai(10, 5), **keys({"llm.cost.total": "0.01"}))
    tree = build_tree(records.all)
    assert tree.totals.cost == Decimal("0.01")
    assert tree.totals.total_tokens == 15


def test_rule_4_counted_claim_brings_its_cost_along(records: RecordFactory) -> None:
    root = records.add("root")
    records.add("agent", root, type="agent", **genai(total=30), **keys({"llm.cost.total": "0.03"}))
    tree = build_tree(records.all)
    assert (tree.totals.total_tokens, tree.totals.cost) == (30, Decimal("0.03"))


def test_rule_2_a_reported_cost_above_an_unpriced_call_is_its_cost(
    records: RecordFactory,
) -> None:
    # Revised rule 2, field by field: the claim's tokens are not added (the call below
    # reports them), but nothing below has a cost, so the claim's reported cost is the
    # call's cost and the call is no longer unpriced.
    root = records.add("root")
    agent = records.add(
        "agent", root, type="agent", **genai(total=40), **keys({"llm.cost.total": "9.99"})
    )
    records.add("call", agent, type="llm", **genai(total=40, model="my-local-llama"))
    tree = build_tree(records.all)
    assert tree.totals.total_tokens == 40
    assert tree.totals.cost == Decimal("9.99")
    assert tree.totals.unpriced_calls == 0
    assert tree.totals.model_calls == 1
    assert node(tree, "agent").role == "claim counted"
    assert node(tree, "agent").mismatch is None


def test_rule_4_a_cost_known_below_keeps_the_claims_cost_out(records: RecordFactory) -> None:
    # The claim reports tokens and a cost; the call below is priced from the table. The
    # claim's cost must not sneak in on top of it.
    root = records.add("root")
    agent = records.add(
        "agent", root, type="agent", **genai(total=40), **keys({"llm.cost.total": "9.99"})
    )
    records.add("call", agent, type="llm", **genai(30, 10, model="gpt-4o"))
    tree = build_tree(records.all)
    expected = calculate_cost("gpt-4o", {"input_tokens": 30, "output_tokens": 10})
    assert tree.totals.total_tokens == 40
    assert tree.totals.cost == expected
    assert node(tree, "agent").mismatch is not None
    assert "cost 9.99 vs" in (node(tree, "agent").mismatch or "")


# --- rule 5: inclusive token convention --------------------------------------------------


def test_rule_5_total_defaults_to_input_plus_output(records: RecordFactory) -> None:
    root = records.add("root")
    records.add(
        "call",
        root,
        type="llm",
        **genai(100, 20),
        **keys(
            {
                "gen_ai.usage.cache_read.input_tokens": 60,
                "gen_ai.usage.cache_creation.input_tokens": 30,
                "gen_ai.usage.reasoning.output_tokens": 15,
            }
        ),
    )
    tree = build_tree(records.all)
    totals = tree.totals
    # cache and reasoning tokens are inside input and output, never added on top
    assert (totals.input_tokens, totals.output_tokens, totals.total_tokens) == (100, 20, 120)
    assert (totals.cache_read_tokens, totals.cache_write_tokens) == (60, 30)
    assert totals.reasoning_tokens == 15


def test_rule_5_reported_total_wins_and_output_alone_gives_total(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    records.add("reported", root, type="llm", **genai(10, 5, total=18))
    records.add("output only", root, type="llm", **genai(output=7))
    tree = build_tree(records.all)
    assert node(tree, "reported").own.total_tokens == 18
    assert node(tree, "output only").own.total_tokens == 7
    assert node(tree, "output only").own.input_tokens is None
    assert tree.totals.total_tokens == 25


# --- rule 6: cost precedence, unpriced is not zero ----------------------------------------


def test_rule_6_reported_beats_override_beats_table(records: RecordFactory) -> None:
    root = records.add("root")
    records.add(
        "reported",
        root,
        type="llm",
        **genai(1000, 100, model="gpt-4o"),
        **keys({"ag.metrics.unit.costs.total": 0.5}),
    )
    records.add("table", root, type="llm", **genai(1000, 100, model="gpt-4o"))
    records.add("override", root, type="llm", **genai(1_000_000, 0, model="my-local-llama"))
    prices = NO_USER_PRICES.with_price("my-local-llama", parse_prices(input=2, output=4))
    tree = build_tree(records.all, user_prices=prices)
    assert node(tree, "reported").own.cost == Decimal("0.5")
    assert node(tree, "reported").priced.source == "reported"
    table_cost = calculate_cost("gpt-4o", {"input_tokens": 1000, "output_tokens": 100})
    assert table_cost is not None and table_cost > 0
    assert node(tree, "table").own.cost == table_cost
    assert node(tree, "table").priced.source == "price table"
    assert node(tree, "override").own.cost == Decimal(2)
    assert node(tree, "override").priced.source == "override"
    assert tree.totals.cost == Decimal("0.5") + table_cost + 2
    prices = prices.with_price("gpt-4o", parse_prices(input=1, output=1))
    assert build_tree(records.all, user_prices=prices).totals.cost == (
        Decimal("0.5") + Decimal("0.0011") + 2
    )
    # The prices are an argument: without them, the table and unpriced again.
    assert build_tree(records.all).totals.cost == Decimal("0.5") + table_cost


def test_rule_6_unknown_model_next_to_a_priced_call(records: RecordFactory) -> None:
    root = records.add("root")
    records.add("local", root, type="llm", **genai(600, 400, model="my-local-llama"))
    records.add("priced", root, type="llm", **genai(1000, 100, model="gpt-4o"))
    tree = build_tree(records.all)
    priced = calculate_cost("gpt-4o", {"input_tokens": 1000, "output_tokens": 100})
    assert tree.totals.total_tokens == 2100  # the unpriced call's 1,000 tokens count
    assert tree.totals.cost == priced  # the known part
    assert tree.totals.unpriced_calls == 1
    assert node(tree, "local").own.cost is None
    assert node(tree, "local").priced.source == "unpriced"
    [local_row] = [row for row in tree.by_model() if row.model == "my-local-llama"]
    assert (local_row.total_tokens, local_row.cost, local_row.unpriced_calls) == (1000, None, 1)


def test_rule_6_unknown_model_with_real_spans() -> None:
    with an.trace("mixed") as result:
        with an.span("local", type="llm"):
            an.record_usage(model="my-local-llama", input_tokens=700, output_tokens=300)
        with an.span("priced", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=1000, output_tokens=100)
    priced = calculate_cost("gpt-4o", {"input_tokens": 1000, "output_tokens": 100})
    assert result.totals.total_tokens == 2100
    assert result.totals.cost == priced
    assert result.totals.unpriced_calls == 1
    assert result.summary().totals.unpriced_calls == 1


def test_rule_6_only_unpriced_calls_give_no_cost_not_zero(records: RecordFactory) -> None:
    root = records.add("root")
    records.add("local", root, type="llm", **genai(5, 5, model="my-local-llama"))
    tree = build_tree(records.all)
    assert tree.totals.cost is None
    assert tree.totals.unpriced_calls == 1


def test_rule_6_zero_is_a_real_cost(records: RecordFactory) -> None:
    root = records.add("root")
    records.add(
        "free",
        root,
        type="llm",
        **genai(5, 5, model="my-local-llama"),
        **keys({"llm.cost.total": 0}),
    )
    tree = build_tree(records.all)
    assert tree.totals.cost == Decimal(0)
    assert tree.totals.cost is not None
    assert tree.totals.unpriced_calls == 0


# --- rule 7: bad values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["abc", -5, float("nan"), float("inf"), True, "", "12abc", -0.5, 2.5, [1, 2]]
)
def test_rule_7_bad_token_value_is_a_warning(records: RecordFactory, bad: Any) -> None:
    root = records.add("root")
    records.add("bad", root, type="llm", **genai(input=bad, output=7))
    records.add("good", root, type="llm", **genai(10, 1))
    tree = build_tree(records.all)
    bad_node = node(tree, "bad")
    assert bad_node.own.input_tokens is None
    assert bad_node.own.output_tokens == 7
    assert any("gen_ai.usage.input_tokens" in warning for warning in bad_node.warnings)
    assert tree.totals.input_tokens == 10  # one bad span never hides the others
    assert tree.totals.output_tokens == 8


@pytest.mark.parametrize("bad", ["abc", -1, float("nan"), float("-inf"), False, "1e999"])
def test_rule_7_bad_cost_is_a_warning(records: RecordFactory, bad: Any) -> None:
    root = records.add("root")
    records.add(
        "bad",
        root,
        type="llm",
        **genai(3, 4, model="my-local-llama"),
        **keys({"llm.cost.total": bad}),
    )
    tree = build_tree(records.all)
    bad_node = node(tree, "bad")
    assert bad_node.own.cost is None
    assert bad_node.own.total_tokens == 7
    assert any("llm.cost.total" in warning for warning in bad_node.warnings)


def test_rule_7_abc_and_minus_5_with_real_otel_spans() -> None:
    tracer = otel_trace.get_tracer("tests.rollup")
    with an.trace("bad values") as result:
        with tracer.start_as_current_span("abc") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.usage.input_tokens", "abc")
            span.set_attribute("gen_ai.usage.output_tokens", 3)
        with tracer.start_as_current_span("negative") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.usage.input_tokens", -5)
        with tracer.start_as_current_span("fine") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.usage.input_tokens", 11)
    assert any("'abc'" in w for w in result.find("abc").warnings)
    assert any("-5" in w for w in result.find("negative").warnings)
    assert result.totals.input_tokens == 11
    assert result.totals.output_tokens == 3
    assert len(result.summary().warnings) == 2


def test_rule_7_record_usage_with_bad_values_warns_and_never_raises() -> None:
    with an.trace("bad record_usage") as result:
        with an.span("call", type="llm"):
            an.record_usage(input_tokens="abc", output_tokens=-5, cost="lots")  # type: ignore[arg-type]
    warnings = result.find("call").warnings
    assert len(warnings) == 3
    assert result.totals.input_tokens is None and result.totals.cost is None


def test_rule_7_a_bad_first_key_falls_back_to_a_good_second_one(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    records.add(
        "call",
        root,
        type="llm",
        **keys({"ag.metrics.unit.tokens.prompt": "abc", "gen_ai.usage.input_tokens": 12}),
    )
    tree = build_tree(records.all)
    assert node(tree, "call").own.input_tokens == 12
    assert len(node(tree, "call").warnings) == 1


# --- rule 8: errors count origins --------------------------------------------------------


def test_rule_8_exception_three_levels_deep_counts_once() -> None:
    def level(depth: int) -> None:
        with an.span(f"level {depth}"):
            if depth == 3:
                raise ValueError("deep")
            try:
                level(depth + 1)
            except ValueError:
                raise

    with pytest.raises(ValueError), an.trace("errors") as result:
        level(1)
    assert [n.is_error for n in result.nodes] == [True, True, True, True]
    assert result.totals.errors == 1
    assert [n.name for n in result.nodes if n.is_error_origin] == ["level 3"]
    assert result.find("level 1").subtotal.errors == 1


def test_rule_8_two_failing_siblings_count_twice(records: RecordFactory) -> None:
    root = records.add("root", status="ERROR")
    records.add("a", root, status="ERROR")
    middle = records.add("b", root)
    records.add("c", middle, status="ERROR")
    records.add("ok", root, status="OK")
    tree = build_tree(records.all)
    assert tree.totals.errors == 2
    assert node(tree, "b").subtotal.errors == 1
    assert not tree.root.is_error_origin


def test_rule_8_a_failing_parent_over_healthy_children_is_the_origin(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    parent = records.add("parent", root, status="ERROR")
    records.add("child", parent, status="OK")
    tree = build_tree(records.all)
    assert node(tree, "parent").is_error_origin
    assert tree.totals.errors == 1


# --- rule 9: per trace id, detached spans ------------------------------------------------


def test_rule_9_detached_span_hangs_under_the_root_and_counts_once(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    records.add("lost", 0xDEAD, type="llm", **genai(total=9))
    records.add("home", root, type="llm", **genai(total=1))
    tree = build_tree(records.all)
    lost = node(tree, "lost")
    assert lost.parent is tree.root and lost.detached
    assert any("detached" in warning for warning in lost.warnings)
    assert tree.totals.total_tokens == 10
    assert sum(1 for n in tree.nodes if n.name == "lost") == 1


def test_rule_9_no_single_root_gives_a_synthetic_one(records: RecordFactory) -> None:
    records.add("one", type="llm", **genai(total=1))
    records.add("two", type="llm", **genai(total=2))
    tree = build_tree(records.all, name="cell")
    assert tree.root.synthetic and tree.root.name == "cell"
    assert not any(n.detached for n in tree.nodes)
    assert tree.totals.total_tokens == 3


def test_rule_9_parent_cycle_is_cut_and_every_span_counts_once(records: RecordFactory) -> None:
    from agenta_notebook.core.rollup import SpanRecord

    root = records.add("root")
    # each reports a figure the other does not, so each figure counts once, wherever the
    # cycle is cut
    a = {"ag.type.node": "task", "gen_ai.usage.input_tokens": 4}
    b = {"ag.type.node": "task", "gen_ai.usage.output_tokens": 5}
    loop_a = SpanRecord(records.trace_id, 100, 101, "loop a", 50, 60, attributes=a)
    loop_b = SpanRecord(records.trace_id, 101, 100, "loop b", 51, 61, attributes=b)
    tree = build_tree([root, loop_a, loop_b])
    assert sorted(n.name for n in tree.nodes) == ["loop a", "loop b", "root"]
    assert (tree.totals.input_tokens, tree.totals.output_tokens) == (4, 5)
    assert sum(1 for n in tree.nodes if n.detached) == 1


def test_rule_9_the_same_span_of_a_cycle_is_cut_whatever_the_order_of_the_records(
    records: RecordFactory,
) -> None:
    """The span of a cycle that starts first is cut loose; the spans under a cycle stay
    under their parent (the cut used to fall on whichever span came first, one under the
    cycle included, so two orders of the same records gave two trees)."""
    from agenta_notebook.core.rollup import SpanRecord

    root = records.add("root")
    trace_id = records.trace_id
    spans = [
        root,
        SpanRecord(trace_id, 200, 200, "own parent", 10, 20),  # a cycle of one
        SpanRecord(trace_id, 201, 200, "under it", 11, 12),
        SpanRecord(trace_id, 300, 302, "c", 30, 40),  # 300 -> 302 -> 301 -> 300
        SpanRecord(trace_id, 301, 300, "a", 31, 41),
        SpanRecord(trace_id, 302, 301, "b", 29, 42),  # starts first: cut
        SpanRecord(trace_id, 303, 301, "under a", 32, 33, attributes={"ag.type.node": "tool"}),
    ]

    def shape(tree: TraceTree) -> list[tuple[Any, ...]]:
        return [
            (n.span_id, n.parent.span_id if n.parent else None, n.depth, n.detached)
            for n in tree.nodes
        ]

    shapes = {tuple(shape(build_tree(order))) for order in itertools.permutations(spans)}
    assert len(shapes) == 1
    (only,) = shapes
    parents = {span_id: (parent, detached) for span_id, parent, _depth, detached in only}
    root_id = root.span_id
    assert parents[200] == (root_id, True)
    assert parents[201] == (200, False)
    assert parents[302] == (root_id, True)
    assert (parents[300], parents[301], parents[303]) == ((302, False), (300, False), (301, False))


def test_rule_9_spans_of_another_trace_never_leak_in() -> None:
    tracer = otel_trace.get_tracer("tests.rollup")
    with an.trace("first") as first:
        with tracer.start_as_current_span("in first"):
            pass
        # a span of another trace started in the middle of this block
        with tracer.start_as_current_span(
            "elsewhere", context=otel_trace.set_span_in_context(otel_trace.INVALID_SPAN)
        ):
            pass
        with an.trace("second") as second, an.span("in second"):
            pass
    assert [n.name for n in first.nodes] == ["first", "in first"]
    assert [n.name for n in second.nodes] == ["second", "in second"]


def test_rule_9_two_traces_built_concurrently_from_two_threads() -> None:
    barrier = threading.Barrier(2)
    results: dict[str, an.Trace] = {}
    errors: list[BaseException] = []

    def cell(label: str) -> None:
        try:
            with an.trace(label) as result:
                for index in range(50):
                    with an.span(f"{label} step {index}", type="llm"):
                        an.record_usage(total_tokens=1 if label == "a" else 1000)
                        if index == 0:
                            barrier.wait(timeout=10)
            results[label] = result
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=cell, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    for label, tokens in (("a", 50), ("b", 50_000)):
        result = results[label]
        names = [n.name for n in result.nodes[1:]]
        assert len(names) == 50 and all(name.startswith(f"{label} step") for name in names)
        assert result.totals.total_tokens == tokens
    assert results["a"].trace_id != results["b"].trace_id


# --- asyncio.gather and a thread pool: the right parent ----------------------------------


def test_ten_children_under_asyncio_gather_have_the_right_parent() -> None:
    @an.span(type="llm")
    async def call(index: int) -> int:
        await asyncio.sleep(0.001 * (10 - index))
        an.record_usage(total_tokens=index)
        return index

    async def main() -> None:
        with an.span("left", type="chain"):
            await asyncio.gather(*(call(i) for i in range(10)))
        with an.span("right", type="chain"):
            await asyncio.gather(*(call(i) for i in range(10, 20)))

    with an.trace("gather") as result:
        asyncio.run(main())
    for parent_name, expected in (("left", range(10)), ("right", range(10, 20))):
        parent = result.find(parent_name)
        assert len(parent.children) == 10
        assert all(child.parent is parent for child in parent.children)
        assert parent.subtotal.total_tokens == sum(expected)
    assert result.totals.total_tokens == sum(range(20))


def test_ten_children_under_a_thread_pool_with_threading_instrumented(
    threads_propagate_context: None,
) -> None:
    # The IPython extension turns OpenTelemetry's ThreadingInstrumentor on; this test
    # does the same through the fixture, so `submit` carries the current span over.
    def call(index: int) -> None:
        with an.span(f"call {index}", type="llm"):
            an.record_usage(total_tokens=index)

    with an.trace("pool") as result:
        with an.span("fan out", type="chain"), ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(call, range(10)))
        with an.span("other", type="chain"):
            pass
    fan_out = result.find("fan out")
    assert sorted(child.name for child in fan_out.children) == sorted(
        f"call {i}" for i in range(10)
    )
    assert not result.find("other").children
    assert fan_out.subtotal.total_tokens == 45


def test_ten_children_under_a_thread_pool_with_the_context_copied_explicitly() -> None:
    def call(index: int) -> None:
        with an.span(f"call {index}", type="llm"):
            an.record_usage(total_tokens=index)

    with an.trace("pool copy") as result:
        with an.span("fan out", type="chain"), ThreadPoolExecutor(max_workers=4) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, call, index) for index in range(10)
            ]
            for future in futures:
                future.result()
    fan_out = result.find("fan out")
    assert len(fan_out.children) == 10
    assert fan_out.subtotal.total_tokens == 45
    assert not any(n.detached for n in result.nodes)


# --- rule 10: late and running spans -----------------------------------------------------


def test_rule_10_a_span_ending_after_the_root_is_picked_up() -> None:
    release = threading.Event()
    started = threading.Event()

    def background(context: contextvars.Context) -> None:
        def work() -> None:
            with an.span("late", type="llm"):
                started.set()
                release.wait(timeout=10)
                an.record_usage(total_tokens=42)

        context.run(work)

    with an.trace("cell") as result:
        with an.span("quick", type="llm"):
            an.record_usage(total_tokens=1)
        worker = threading.Thread(target=background, args=(contextvars.copy_context(),))
        worker.start()
        started.wait(timeout=10)
    # the block is over; the late span is still open
    assert result.closed
    assert result.running
    assert result.find("late").running
    assert result.summary().running == 1
    assert result.totals.total_tokens == 1  # a running span has reported nothing yet
    seen: list[int] = []
    result.add_listener(lambda changed: seen.append(changed.version))
    release.set()
    worker.join(timeout=10)
    assert not result.running
    assert not result.find("late").running
    assert result.totals.total_tokens == 43
    assert seen, "listeners hear about the late span"


def test_rule_10_running_records_are_shown_as_running(records: RecordFactory) -> None:
    root = records.add("root", running=True)
    records.add("open", root, type="llm", running=True)
    records.add("done", root, type="llm", **genai(total=3))
    tree = build_tree(records.all)
    assert tree.root.running and node(tree, "open").running
    assert not node(tree, "done").running
    assert tree.running_count == 2
    assert node(tree, "open").duration_ms is None


def test_rule_10_the_ended_copy_of_a_span_wins_over_the_running_one(
    records: RecordFactory,
) -> None:
    from dataclasses import replace

    root = records.add("root")
    running = records.add("call", root, type="llm", running=True)
    ended = replace(running, end_time_ns=running.start_time_ns + 5, attributes=genai(total=8))
    for order in ([root, running, ended], [root, ended, running]):
        tree = build_tree(order)
        assert not node(tree, "call").running
        assert tree.totals.total_tokens == 8


# --- rule 11: order of arrival does not matter -------------------------------------------


def sample_tree(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add("agent", root, type="agent", **genai(total=77))
    records.add("a", agent, type="llm", **genai(30, 10, model="gpt-4o"))
    chain = records.add("chain", agent, type="chain")
    records.add("b", chain, type="llm", **genai(20, 5, model="my-local-llama"))
    records.add("c", chain, type="llm", status="ERROR", **keys({"llm.cost.total": "0.125"}))
    records.add("claim", root, type="agent", **genai(total=9))
    records.add("bad", root, type="llm", **genai(input="abc", output=2))


def test_rule_11_every_arrival_order_gives_the_same_tree(records: RecordFactory) -> None:
    sample_tree(records)
    reference = build_tree(records.all)
    shape = [(n.name, n.depth, n.subtotal, n.own, n.role) for n in reference.nodes]
    orders = list(itertools.permutations(records.all))
    for order in [*random.Random(11).sample(orders, 300), tuple(reversed(records.all))]:
        tree = build_tree(order)
        assert [(n.name, n.depth, n.subtotal, n.own, n.role) for n in tree.nodes] == shape


def test_rule_11_late_and_out_of_order_arrival_in_a_live_trace(records: RecordFactory) -> None:
    sample_tree(records)
    reference = build_tree(records.all).totals
    live = an.Trace(records.trace_id, "live", root_span_id=records.all[0].span_id)
    shuffled = list(records.all)
    random.Random(3).shuffle(shuffled)
    for record in shuffled:
        live.add_records([record])
        live.tree  # noqa: B018 - a view reads the tree after every arrival
    assert live.totals == reference


# --- rule 12: exact numbers --------------------------------------------------------------


def test_rule_12_costs_are_exact_decimals(records: RecordFactory) -> None:
    root = records.add("root")
    for index in range(10):
        records.add(f"c{index}", root, type="llm", **keys({"llm.cost.total": 0.1}))
    tree = build_tree(records.all)
    assert tree.totals.cost == Decimal("1.0")  # 10 x 0.1 in floats is 0.9999999999999999
    assert isinstance(tree.totals.cost, Decimal)


def test_rule_12_sums_wider_than_28_digits_stay_exact_in_any_order(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    costs = ["12345678.901234567", "1.2345678901234567e-12", "0.1", "98765.4321"]
    for index, cost in enumerate(costs):
        records.add(f"c{index}", root, type="llm", **keys({"llm.cost.total": cost}))
    with localcontext(prec=200):
        exact = sum((Decimal(cost) for cost in costs), Decimal(0))
    assert len(exact.as_tuple().digits) > 28  # the default context would round it
    for order in itertools.permutations(records.all):
        tree = build_tree(order)
        assert tree.totals.cost == exact
        assert tree.totals.cost == own_sum(tree).cost


def test_rule_12_root_equals_the_sum_of_counted_own_figures(records: RecordFactory) -> None:
    sample_tree(records)
    tree = build_tree(records.all)
    assert tree.totals == own_sum(tree)
    check_rule_1(tree)


# --- the same rules on real spans --------------------------------------------------------


def test_rules_1_4_5_12_with_real_spans() -> None:
    with an.trace("real figures") as result:
        with an.span("agent", type="agent"):
            an.record_usage(total_tokens=10_000, cost=9.99)  # a claim: spans below report
            for _ in range(10):
                with an.span("call", type="llm"):
                    an.record_usage(
                        model="my-local-llama",
                        input_tokens=100,
                        output_tokens=20,
                        cache_read_tokens=60,
                        reasoning_tokens=5,
                        cost=0.1,
                    )
        with an.span("solo claim", type="agent"):
            an.record_usage(input_tokens=7, cost="1e-29")
    tree = result.tree
    check_rule_1(tree)
    agent = result.find("agent")
    assert agent.role == "claim not counted"
    assert agent.subtotal.total_tokens == 1200 and agent.subtotal.cost == Decimal("1.0")
    assert agent.subtotal.cache_read_tokens == 600 and agent.subtotal.reasoning_tokens == 50
    assert any("mismatch" in warning for warning in agent.warnings)
    assert result.find("solo claim").role == "claim counted"
    assert result.totals.input_tokens == 1007
    # 30 significant digits: the default decimal context (28) would round it away
    assert result.totals.cost == Decimal("1.00000000000000000000000000001")
    assert result.totals == own_sum(tree)


def test_rule_3_claim_with_nothing_below_counts_with_real_spans() -> None:
    with an.trace("claim alone") as result:
        with an.span("agent", type="agent"):
            an.record_usage(total_tokens=300)
            with an.span("plan", type="tool"):
                pass
    assert result.totals.total_tokens == 300
    assert result.find("agent").role == "claim counted"


def test_rule_9_detached_real_span_is_counted_once() -> None:
    tracer = otel_trace.get_tracer("tests.rollup")
    with an.trace("detached") as result:
        # a parent with this trace's id that never reaches the collector (a remote or
        # non-recording span): its child belongs to the trace but has no parent in it
        ghost = otel_trace.NonRecordingSpan(
            otel_trace.SpanContext(
                trace_id=otel_trace.get_current_span().get_span_context().trace_id,
                span_id=0xBEEF,
                is_remote=True,
                trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
            )
        )
        with tracer.start_as_current_span(
            "orphan", context=otel_trace.set_span_in_context(ghost)
        ) as orphan:
            orphan.set_attribute("gen_ai.operation.name", "chat")
            orphan.set_attribute("gen_ai.usage.input_tokens", 4)
    orphan_node = result.find("orphan")
    assert orphan_node.detached and orphan_node.parent is result.root
    assert any("detached" in warning for warning in orphan_node.warnings)
    assert result.totals.input_tokens == 4
    assert [n.name for n in result.nodes].count("orphan") == 1


def test_rule_11_parents_ending_before_children_with_real_spans() -> None:
    # Children in threads end after their parent (and the root) did: the arrival order
    # is parent first, the reverse of the usual.
    gate = threading.Event()
    workers: list[threading.Thread] = []

    def child(index: int) -> None:
        gate.wait(timeout=10)
        with an.span(f"child {index}", type="llm"):
            an.record_usage(total_tokens=index + 1)

    with an.trace("out of order") as result:
        with an.span("parent", type="chain"):
            for index in range(5):
                context = contextvars.copy_context()
                worker = threading.Thread(target=context.run, args=(child, index))
                worker.start()
                workers.append(worker)
    gate.set()
    for worker in workers:
        worker.join(timeout=10)
    parent = result.find("parent")
    assert sorted(c.name for c in parent.children) == [f"child {i}" for i in range(5)]
    assert parent.subtotal.total_tokens == 15 and result.totals.total_tokens == 15
    ended_order = [record.span_id for record in result.records()]
    shuffled_tree = build_tree(list(reversed(result.records())), result.root_span_id)
    assert shuffled_tree.totals == result.totals
    assert len(ended_order) == 7


def test_rule_12_costs_finer_than_1e_30_are_rounded_there_and_never_raise(
    records: RecordFactory,
) -> None:
    root = records.add("root")
    records.add("tiny", root, type="llm", **keys({"llm.cost.total": "1.6e-30"}))
    records.add("huge", root, type="llm", **keys({"llm.cost.total": "1e39"}))
    records.add("absurd", root, type="llm", **keys({"llm.cost.total": "1e45"}))
    tree = build_tree(records.all)
    assert node(tree, "tiny").own.cost == Decimal("2e-30")
    assert node(tree, "absurd").own.cost is None  # not a cost: a warning instead
    assert any("llm.cost.total" in warning for warning in node(tree, "absurd").warnings)
    with localcontext(prec=100):
        assert tree.totals.cost == Decimal("1e39") + Decimal("2e-30")  # 70 digits, exact
    assert tree.totals.cost == own_sum(tree).cost


def test_records_given_by_hand_are_kept_as_rows_that_share_their_resource() -> None:
    """Records (from a file, by hand) become a row and attributes each; the records of
    one resource give rows that share one tuple of it, and every node gives its record
    back equal to the one given."""
    from agenta_notebook.core.rollup import RESOURCE, SpanRecord, split_record
    from agenta_notebook.live import Trace

    resource = {"service.name": "notebook", "host.name": "here"}
    records = [
        SpanRecord(
            7,
            index,
            None if index == 1 else 1,
            f"span {index}",
            index,
            index + 10,
            attributes={"ag.type.node": "tool", "index": index},
            kind="CLIENT",
            scope="by hand",
            resource=resource,
        )
        for index in range(1, 5)
    ]
    tree = build_tree(records)
    assert len({id(node.row[RESOURCE]) for node in tree.nodes}) == 1
    assert [node.record for node in tree.nodes] == records
    trace = Trace(7, "by hand", records=records)
    assert len({id(row[RESOURCE]) for row in trace._rows}) == 1
    assert trace.records() == records
    assert [node.record for node in trace.tree.nodes] == records
    row, attributes = split_record(records[1])
    assert attributes is records[1].attributes and row[RESOURCE] == tuple(resource.items())
