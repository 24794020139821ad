"""The revised roll-up rules for real stacks: one call recorded at several layers.

Usage counts at the lowest layer that reports it, field by field (rule 2); model calls
are the lowest model-call spans (rule 3); two instrumentations recording one call side by
side count it once (rule 13); a refused call costs nothing (rule 14); prices apply when
the tree is built (rule 15). Expected costs come from genai-prices directly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanEvent, SpanNode, SpanRecord, TraceTree, build_tree
from agenta_notebook.core.usage import read_usage
from agenta_notebook.live import Trace
from agenta_notebook.runtime import clear_prices, set_prices
from agenta_notebook.views.display import TraceDisplay

TRACE = 0x7E57
OPENAI_SCOPE = "openinference.instrumentation.openai"
LANGCHAIN_SCOPE = "openinference.instrumentation.langchain"
ANTHROPIC_SDK_SCOPE = "com.anthropic.sdk.python"
OPENLLMETRY_ANTHROPIC_SCOPE = "opentelemetry.instrumentation.anthropic"


def table_cost(model: str, **counts: int) -> Decimal:
    return calc_price(PriceUsage(**counts), model).total_price


class Spans:
    """Hand-made records of one trace, with scopes and explicit times."""

    def __init__(self) -> None:
        self.all: list[SpanRecord] = []

    def add(
        self,
        name: str,
        parent: SpanRecord | None,
        start: int,
        end: int,
        *,
        scope: str | None = None,
        status: Any = "UNSET",
        status_message: str | None = None,
        events: tuple[SpanEvent, ...] = (),
        **attributes: Any,
    ) -> SpanRecord:
        record = SpanRecord(
            trace_id=TRACE,
            span_id=len(self.all) + 1,
            parent_span_id=None if parent is None else parent.span_id,
            name=name,
            start_time_ns=start,
            end_time_ns=end,
            status=status,
            status_message=status_message,
            attributes=attributes,
            events=events,
            scope=scope,
        )
        self.all.append(record)
        return record


def attrs(**values: Any) -> dict[str, Any]:
    """Attribute keys written with `__` for dots: gen_ai__usage__input_tokens."""
    return {key.replace("__", "."): value for key, value in values.items()}


def genai_call(model: str, input: int, output: int, **extra: Any) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input,
        "gen_ai.usage.output_tokens": output,
        **extra,
    }


def openinference_llm(model: str, prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    return {
        "openinference.span.kind": "LLM",
        "llm.model_name": model,
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "llm.token_count.total": prompt + completion,
        **extra,
    }


def node(tree: TraceTree, name: str) -> SpanNode:
    return next(n for n in tree.nodes if n.name == name)


def shape(tree: TraceTree) -> list[tuple[Any, ...]]:
    return [(n.span_id, n.role, n.own, n.subtotal, n.warnings) for n in tree.nodes]


def assert_order_free(records: list[SpanRecord], tree: TraceTree) -> None:
    """Rule 11: any order of arrival gives the same tree."""
    generator = random.Random(7)
    for _ in range(5):
        shuffled = list(records)
        generator.shuffle(shuffled)
        assert shape(build_tree(shuffled)) == shape(tree)


# --- rule 2: the lowest layer that reports a figure counts it -------------------------------


def test_llm_40_over_instrumented_llm_40_counts_once() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    outer = spans.add("ask", root, 1, 90, **{"ag.type.node": "llm"}, **genai_call("gpt-4o", 30, 10))
    spans.add("chat", outer, 2, 80, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 30, 10))
    tree = build_tree(spans.all)
    assert tree.totals.total_tokens == 40
    assert tree.totals.model_calls == 1
    assert tree.totals.cost == table_cost("gpt-4o", input_tokens=30, output_tokens=10)
    assert node(tree, "ask").subtotal.total_tokens == 40
    assert node(tree, "ask").role == "model call wrapper"
    assert node(tree, "ask").warnings == ()
    assert_order_free(spans.all, tree)


def test_llm_50_over_instrumented_llm_40_shows_40_with_a_mismatch() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    outer = spans.add("ask", root, 1, 90, **{"ag.type.node": "llm"}, **genai_call("gpt-4o", 40, 10))
    spans.add("chat", outer, 2, 80, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 30, 10))
    tree = build_tree(spans.all)
    assert tree.totals.total_tokens == 40
    assert tree.totals.model_calls == 1
    mismatch = node(tree, "ask").mismatch
    assert mismatch is not None
    assert "input tokens 40 vs 30" in mismatch and "total tokens 50 vs 40" in mismatch
    assert mismatch in node(tree, "ask").warnings


def test_claims_over_claims_over_calls_count_300_without_warnings() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    a = spans.add("A", root, 1, 90, **attrs(gen_ai__usage__total_tokens=300))
    b = spans.add("B", a, 2, 80, **attrs(gen_ai__usage__total_tokens=300))
    spans.add("C", b, 3, 10, **{"ag.type.node": "llm"}, **attrs(gen_ai__usage__total_tokens=100))
    spans.add("D", b, 11, 20, **{"ag.type.node": "llm"}, **attrs(gen_ai__usage__total_tokens=200))
    tree = build_tree(spans.all)
    assert tree.totals.total_tokens == 300
    assert tree.totals.model_calls == 2
    assert all(not n.warnings for n in tree.nodes)
    assert node(tree, "A").role == node(tree, "B").role == "claim not counted"


def test_a_reported_cost_over_an_unpriced_call_is_the_calls_cost() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    function = spans.add(
        "llm function",
        root,
        1,
        90,
        **{"ag.type.node": "llm", "ag.metrics.unit.costs.total": 0.0042},
    )
    spans.add("chat", function, 2, 80, scope=OPENAI_SCOPE, **genai_call("my-local-llama", 900, 100))
    tree = build_tree(spans.all)
    totals = tree.totals
    assert (totals.model_calls, totals.total_tokens) == (1, 1000)
    assert totals.cost == Decimal("0.0042")
    assert totals.unpriced_calls == 0
    assert node(tree, "chat").own.unpriced_calls == 1  # unpriced where it was made...
    assert node(tree, "llm function").subtotal.unpriced_calls == 0  # ...priced above it


def test_an_llm_function_reporting_300_over_two_silent_client_spans() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    function = spans.add(
        "llm function",
        root,
        1,
        90,
        **{"ag.type.node": "llm"},
        **genai_call("gpt-4o-mini", 200, 100),
    )
    for index in range(2):
        spans.add(
            f"chat {index}",
            function,
            10 + 20 * index,
            20 + 20 * index,
            scope=OPENAI_SCOPE,
            **{"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini"},
        )
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 2
    assert tree.totals.total_tokens == 300
    assert tree.totals.cost == table_cost("gpt-4o-mini", input_tokens=200, output_tokens=100)
    assert tree.totals.unpriced_calls == 0


def test_fields_count_where_each_is_reported_lowest() -> None:
    # The wrapper alone reports cache reads; the client's span reports input and output.
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    wrapper = spans.add(
        "framework llm",
        root,
        1,
        90,
        scope=LANGCHAIN_SCOPE,
        **openinference_llm(
            "gpt-4o", 500, 20, **attrs(llm__token_count__prompt_details__cache_read=400)
        ),
    )
    spans.add("chat", wrapper, 2, 80, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 500, 20))
    tree = build_tree(spans.all)
    totals = tree.totals
    assert (totals.input_tokens, totals.output_tokens, totals.cache_read_tokens) == (500, 20, 400)
    assert totals.model_calls == 1
    assert node(tree, "framework llm").own.cache_read_tokens == 400
    assert node(tree, "framework llm").own.input_tokens is None


# --- rule 3 ------------------------------------------------------------------------------------


def test_one_call_recorded_at_three_layers_counts_once() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 100)
    agenta = spans.add(
        "ag llm", root, 1, 95, **{"ag.type.node": "llm"}, **genai_call("gpt-4o", 7, 3)
    )
    litellm = spans.add(
        "completion",
        agenta,
        2,
        90,
        scope="openinference.instrumentation.litellm",
        **openinference_llm("gpt-4o", 7, 3),
    )
    spans.add("chat", litellm, 3, 80, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 7, 3))
    tree = build_tree(spans.all)
    assert (tree.totals.model_calls, tree.totals.total_tokens) == (1, 10)
    assert [n.role for n in tree.nodes[1:]] == [
        "model call wrapper",
        "model call wrapper",
        "model call",
    ]


# --- rule 13: two recorders side by side ----------------------------------------------------


def langchain_and_openai(spans: Spans, parent: SpanRecord, start: int, **ids: Any) -> None:
    """A LangChain chat span and the OpenAI client's span of the same call, siblings."""
    spans.add(
        "ChatOpenAI",
        parent,
        start,
        start + 50,
        scope=LANGCHAIN_SCOPE,
        **openinference_llm("gpt-4o-mini", 120, 30, **ids.get("langchain", {})),
    )
    spans.add(
        "ChatCompletion",
        parent,
        start + 5,
        start + 40,
        scope=OPENAI_SCOPE,
        **openinference_llm("gpt-4o-mini-2024-07-18", 120, 30, **ids.get("openai", {})),
    )


def test_siblings_of_two_scopes_for_one_call_count_once() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    chain = spans.add(
        "RunnableSequence",
        root,
        1,
        900,
        scope=LANGCHAIN_SCOPE,
        **{"openinference.span.kind": "CHAIN"},
    )
    for index in range(6):
        langchain_and_openai(spans, chain, 10 + 100 * index)
    tree = build_tree(spans.all)
    totals = tree.totals
    assert totals.model_calls == 6
    assert totals.total_tokens == 6 * 150
    assert totals.cost == 6 * table_cost("gpt-4o-mini", input_tokens=120, output_tokens=30)
    twins = [n for n in tree.nodes if n.role == "recorded twice"]
    assert [n.name for n in twins] == ["ChatOpenAI"] * 6
    for twin in twins:
        assert twin.own.model_calls == 0 and twin.own.total_tokens is None
        assert twin.duplicate_of is not None and twin.duplicate_of.name == "ChatCompletion"
        assert any(
            w.startswith(f"recorded twice by {OPENAI_SCOPE} and {LANGCHAIN_SCOPE}")
            for w in twin.warnings
        )
    assert_order_free(spans.all, tree)


def test_two_identical_calls_of_one_scope_are_two_calls() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add("chat 1", root, 10, 60, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 10, 5))
    spans.add("chat 2", root, 70, 120, scope=OPENAI_SCOPE, **genai_call("gpt-4o", 10, 5))
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 2
    assert tree.totals.total_tokens == 30
    assert not any(n.role == "recorded twice" for n in tree.nodes)


def test_equal_counts_that_do_not_overlap_in_time_are_two_calls() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "framework", root, 10, 60, scope=LANGCHAIN_SCOPE, **openinference_llm("gpt-4o", 10, 5)
    )
    spans.add("client", root, 70, 120, scope=OPENAI_SCOPE, **openinference_llm("gpt-4o", 10, 5))
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 2


def test_response_ids_pair_concurrent_identical_calls_right() -> None:
    # Two identical calls in flight at once (asyncio.gather): model and counts are equal
    # and the intervals nest both ways; only the response ids tell which is which.
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "lc a",
        root,
        10,
        200,
        scope=LANGCHAIN_SCOPE,
        **openinference_llm("gpt-4o", 10, 5, **{"output.value": '{"id": "chatcmpl-AAAA1"}'}),
    )
    spans.add(
        "lc b",
        root,
        11,
        190,
        scope=LANGCHAIN_SCOPE,
        **openinference_llm("gpt-4o", 10, 5, **{"output.value": '{"id": "chatcmpl-BBBB2"}'}),
    )
    spans.add(
        "oa b",
        root,
        20,
        100,
        scope=OPENAI_SCOPE,
        **genai_call("gpt-4o", 10, 5, **{"gen_ai.response.id": "chatcmpl-BBBB2"}),
    )
    spans.add(
        "oa a",
        root,
        30,
        120,
        scope=OPENAI_SCOPE,
        **genai_call("gpt-4o", 10, 5, **{"gen_ai.response.id": "chatcmpl-AAAA1"}),
    )
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 2
    lc_a, lc_b = node(tree, "lc a"), node(tree, "lc b")
    assert lc_a.duplicate_of is node(tree, "oa a")
    assert lc_b.duplicate_of is node(tree, "oa b")
    assert_order_free(spans.all, tree)


def test_differing_response_ids_are_different_calls() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "sdk",
        root,
        20,
        100,
        scope=ANTHROPIC_SDK_SCOPE,
        **genai_call("claude-sonnet-4-5", 10, 5, **{"gen_ai.response.id": "msg_0001"}),
    )
    spans.add(
        "openllmetry",
        root,
        10,
        110,
        scope=OPENLLMETRY_ANTHROPIC_SCOPE,
        **genai_call("claude-sonnet-4-5", 10, 5, **{"gen_ai.response.id": "msg_0002"}),
    )
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 2


def test_three_recorders_of_one_call_count_once() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    shared = {"gen_ai.response.id": "msg_0123456"}
    spans.add(
        "openllmetry",
        root,
        10,
        110,
        scope=OPENLLMETRY_ANTHROPIC_SCOPE,
        **genai_call("claude-sonnet-4-5", 10, 6, **shared),
    )  # streamed: output + 1
    spans.add(
        "sdk",
        root,
        20,
        100,
        scope=ANTHROPIC_SDK_SCOPE,
        **genai_call("claude-sonnet-4-5", 10, 5, **shared),
    )
    spans.add(
        "framework",
        root,
        5,
        120,
        scope=LANGCHAIN_SCOPE,
        **openinference_llm("claude-sonnet-4-5", 10, 5),
    )
    tree = build_tree(spans.all)
    assert tree.totals.model_calls == 1
    assert tree.totals.output_tokens == 5  # the SDK's own span, closest to the request
    assert node(tree, "sdk").role == "model call"
    assert node(tree, "openllmetry").role == node(tree, "framework").role == "recorded twice"


# --- rule 14: refused calls --------------------------------------------------------------


def failed(
    spans: Spans, parent: SpanRecord, name: str, start: int, end: int, scope: str, **attributes: Any
) -> SpanRecord:
    error = SpanEvent(
        "exception",
        start + 1,
        {
            "exception.type": "openai.InternalServerError",
            "exception.message": "Error code: 500 - {'error': {'message': 'boom'}}",
        },
    )
    return spans.add(
        name,
        parent,
        start,
        end,
        scope=scope,
        status="ERROR",
        status_message="InternalServerError: Error code: 500",
        events=(error,),
        **attributes,
    )


def test_a_call_refused_with_http_500_is_one_call_one_error_not_unpriced() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000, status="ERROR")
    failed(
        spans,
        root,
        "ChatCompletion",
        10,
        20,
        OPENAI_SCOPE,
        **{
            "openinference.span.kind": "LLM",
            "llm.invocation_parameters": '{"model": "gpt-4o-mini", "temperature": 0}',
        },
    )
    tree = build_tree(spans.all)
    totals = tree.totals
    assert (totals.model_calls, totals.errors, totals.unpriced_calls) == (1, 1, 0)
    call = node(tree, "ChatCompletion")
    assert call.role == "failed model call"
    assert call.usage.model == "gpt-4o-mini"
    assert [row.model for row in tree.by_model()] == ["gpt-4o-mini"]


def test_a_refused_call_recorded_by_two_scopes_is_one_call_one_error() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "anthropic.chat",
        root,
        10,
        100,
        scope=OPENLLMETRY_ANTHROPIC_SCOPE,
        status="ERROR",
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "error.type": "InternalServerError",
        },
    )
    spans.add(
        "anthropic.messages.create",
        root,
        20,
        90,
        scope=ANTHROPIC_SDK_SCOPE,
        status="ERROR",
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "error.type": "api_error",
            "http.response.status_code": 500,
        },
    )
    tree = build_tree(spans.all)
    totals = tree.totals
    assert (totals.model_calls, totals.errors, totals.unpriced_calls) == (1, 1, 0)
    assert node(tree, "anthropic.chat").role == "recorded twice"


@pytest.mark.parametrize(
    ("error_type", "status_code"),
    [("client_timeout_error", None), ("APITimeoutError", None), ("connection_error", None)],
)
def test_a_timeout_or_dropped_connection_stays_unpriced(error_type: str, status_code: Any) -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "chat",
        root,
        10,
        100,
        scope=OPENAI_SCOPE,
        status="ERROR",
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "error.type": error_type,
        },
    )
    tree = build_tree(spans.all)
    assert (tree.totals.model_calls, tree.totals.errors, tree.totals.unpriced_calls) == (1, 1, 1)
    assert node(tree, "chat").role == "unreported model call"


def test_a_successful_call_without_usage_stays_unpriced() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "stream",
        root,
        10,
        100,
        scope=OPENAI_SCOPE,
        **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"},
    )
    tree = build_tree(spans.all)
    assert (tree.totals.model_calls, tree.totals.unpriced_calls) == (1, 1)


# --- rule 7: counts past 2**63 - 1 -----------------------------------------------------------


def test_a_token_count_of_10_to_the_30_is_a_warning_and_ignored() -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add("chat", root, 10, 100, **genai_call("gpt-4o", 10**30, 5))
    spans.add(
        "text",
        root,
        110,
        200,
        **genai_call("gpt-4o", 3, 5, **{"gen_ai.usage.input_tokens": str(10**30)}),
    )
    tree = build_tree(spans.all)
    assert tree.totals.input_tokens is None
    assert tree.totals.output_tokens == 10
    for name in ("chat", "text"):
        assert any("gen_ai.usage.input_tokens" in w for w in node(tree, name).warnings)
    assert read_usage({"gen_ai.usage.input_tokens": 2**63 - 1}).input_tokens == 2**63 - 1
    assert read_usage({"gen_ai.usage.input_tokens": 2**63}).input_tokens is None


# --- rule 15: prices apply at build time --------------------------------------------------------


@pytest.fixture
def no_user_prices() -> Iterator[None]:
    clear_prices()
    yield
    clear_prices()


def test_set_prices_updates_kept_traces(no_user_prices: None) -> None:
    with an.trace("before prices") as trace:
        with an.span("call", type="llm"):
            an.record_usage(model="house-model-7b", input_tokens=2_000_000, output_tokens=1_000_000)
    assert trace.totals.cost is None and trace.totals.unpriced_calls == 1
    set_prices("house-model-7b", input=0.5, output=2)
    assert trace.totals.cost == Decimal("3.0")
    assert trace.totals.unpriced_calls == 0
    clear_prices("house-model-7b")
    assert trace.totals.cost is None


def test_set_prices_redraws_open_views(no_user_prices: None) -> None:
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add("call", root, 10, 100, **genai_call("house-model-13b", 1_000_000, 0))
    trace = Trace(TRACE, "root", root_span_id=root.span_id, records=spans.all)
    shown = TraceDisplay(trace, widget=True)
    try:
        shown.finish()
        assert "cost 1 unpriced" in shown.bundle()["text/plain"]
        redraws = shown.redraws
        set_prices("house-model-13b", input=1.25, output=0)
        deadline = time.monotonic() + 10
        while shown.redraws == redraws and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shown.redraws > redraws
        assert "$1.25" in shown.bundle()["text/plain"]
    finally:
        shown.close()


# --- vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("ag.metrics.unit.tokens.cache_read", "cache_read_tokens"),
        ("ag.metrics.unit.tokens.cached", "cache_read_tokens"),  # written by 0.1.0
        ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
        ("gen_ai.usage.cache_read_input_tokens", "cache_read_tokens"),
        ("gen_ai.usage.input_tokens.cached", "cache_read_tokens"),
        ("llm.token_count.prompt_details.cache_read", "cache_read_tokens"),
        ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
        ("gen_ai.usage.cache_write.input_tokens", "cache_write_tokens"),
        ("gen_ai.usage.cache_creation_input_tokens", "cache_write_tokens"),
        ("gen_ai.usage.input_tokens.cache_write", "cache_write_tokens"),
        ("llm.token_count.prompt_details.cache_write", "cache_write_tokens"),
        ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
        ("gen_ai.usage.reasoning_tokens", "reasoning_tokens"),
        ("llm.token_count.completion_details.reasoning", "reasoning_tokens"),
    ],
)
def test_every_listed_key_is_read(key: str, field: str) -> None:
    usage = read_usage({"gen_ai.usage.input_tokens": 900, key: 321})
    assert getattr(usage, field) == 321


def test_agenta_runtime_cost_is_a_reported_cost() -> None:
    usage = read_usage({"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.cost": 0.0042})
    assert usage.cost == Decimal("0.0042")
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "agent run",
        root,
        10,
        100,
        **{"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.cost": 0.0042},
    )
    tree = build_tree(spans.all)
    assert tree.totals.cost == Decimal("0.0042") and tree.totals.unpriced_calls == 0


def test_anthropic_sdk_span_prices_cache_writes_at_their_rate() -> None:
    # The Anthropic SDK's own span: inclusive input (its docs and source), cache writes
    # under `gen_ai.usage.cache_write.input_tokens`.
    model = "claude-sonnet-4-5"
    uncached, cache_write, cache_read, output = 100, 2048, 0, 50
    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "anthropic.messages.create",
        root,
        10,
        100,
        scope=ANTHROPIC_SDK_SCOPE,
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": uncached + cache_write + cache_read,
            "gen_ai.usage.output_tokens": output,
            "gen_ai.usage.cache_write.input_tokens": cache_write,
            "gen_ai.usage.cache_read.input_tokens": cache_read,
        },
    )
    tree = build_tree(spans.all)
    expected = calc_price(
        PriceUsage(
            input_tokens=uncached + cache_write,
            cache_write_tokens=cache_write,
            output_tokens=output,
        ),
        model,
        provider_id="anthropic",
    ).total_price
    plain = table_cost(model, input_tokens=uncached + cache_write, output_tokens=output)
    assert tree.totals.cost == expected
    assert expected != plain  # the cache write is not priced as plain input
    assert tree.totals.cache_write_tokens == cache_write


def test_record_usage_writes_agentas_cache_read_key() -> None:
    with an.trace("keys") as trace:
        with an.span("call", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=1, cache_read_tokens=64)
    attributes = trace.find("call").record.attributes
    assert attributes["ag.metrics.unit.tokens.cache_read"] == 64
    assert "ag.metrics.unit.tokens.cached" not in attributes


def test_a_twin_row_is_badged_recorded_twice_not_as_an_error_origin() -> None:
    from agenta_notebook.views.html import markers

    spans = Spans()
    root = spans.add("root", None, 0, 1000)
    spans.add(
        "anthropic.chat",
        root,
        10,
        100,
        scope=OPENLLMETRY_ANTHROPIC_SCOPE,
        status="ERROR",
        **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4-5"},
        **{"error.type": "InternalServerError"},
    )
    spans.add(
        "anthropic.messages.create",
        root,
        20,
        90,
        scope=ANTHROPIC_SDK_SCOPE,
        status="ERROR",
        **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4-5"},
        **{"http.response.status_code": 500},
    )
    tree = build_tree(spans.all)
    labels = [m.label for m in markers(node(tree, "anthropic.chat"))]
    assert labels == ["✖", "⧉ recorded twice"]
    assert [m.label for m in markers(node(tree, "anthropic.messages.create"))] == ["✖ error"]
