"""OpenAI calls traced through `instrument_openai()`, with the real client and the stand-in.

Expected tokens come from the usage the client hands back to the caller, and expected
costs from `genai_prices.calc_price` called here directly, never from our own code.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import openai
import pandas as pd
import pytest
from nbval_run import run_nbval
from openinference.instrumentation.openai import OpenAIInstrumentor

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.integrations import openai as integration
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME, get_collector

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a research assistant. Be brief, precise and kind."},
    {"role": "user", "content": "What limits the speed of a sailing boat?"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def instrumented() -> Iterator[None]:
    an.instrument_openai()
    yield
    an.uninstrument_openai()


@pytest.fixture()
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only for the stand-in: every client below is pointed at 127.0.0.1.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture()
def client(server: demo.DemoServer, api_key: None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)


@pytest.fixture()
def async_client(server: demo.DemoServer, api_key: None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, max_retries=0, timeout=10)


def expected_cost(
    model: str, input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0
) -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached or None,
        output_reasoning_tokens=reasoning or None,
    )
    return genai_prices.calc_price(usage, model, provider_id="openai").total_price


def model_calls(trace: Trace) -> list[SpanNode]:
    return [node for node in trace.nodes if node.usage.is_model_call]


def child_calls(trace: Trace, parent: str) -> list[SpanNode]:
    [parent_node] = [node for node in trace.nodes if node.name == parent]
    return [node for node in parent_node.children if node.usage.is_model_call]


def assert_call(
    node: SpanNode,
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    reasoning: int,
) -> Decimal:
    own = node.own
    assert (own.input_tokens, own.output_tokens) == (input_tokens, output_tokens)
    assert own.total_tokens == input_tokens + output_tokens
    assert own.cache_read_tokens == cached
    assert own.reasoning_tokens == reasoning
    cost = expected_cost(model, input_tokens, output_tokens, cached, reasoning)
    assert own.cost == cost
    assert node.priced.source == "price table"
    assert node.priced.matched_model is not None
    assert node.priced.matched_model.startswith("openai/")
    assert node.record.status != "ERROR" and not node.running
    assert own.model_calls == 1 and own.unpriced_calls == 0
    return cost


def test_every_call_shape_once_under_its_parent(
    client: openai.OpenAI, async_client: openai.AsyncOpenAI
) -> None:
    costs: list[Decimal] = []
    with an.trace("research agent") as trace:
        with an.span("plan", type="agent"):
            planned = client.chat.completions.create(model="o3-mini", messages=MESSAGES)
        with an.span("draft", type="task"):
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        with an.span("summarise", type="task"):
            summary = client.responses.create(
                model="gpt-4o-mini", instructions="Summarise in one line.", input="Sails."
            )
        with an.span("review", type="task"):
            events = list(
                client.responses.create(model="gpt-4.1-mini", input="Check it.", stream=True)
            )
        with an.span("embed", type="retriever"):
            embedded = client.embeddings.create(
                model="text-embedding-3-small", input=["hull speed", "wind"]
            )
        with an.span("research", type="agent"):

            async def fan_out() -> list[Any]:
                return await asyncio.gather(
                    *(
                        async_client.chat.completions.create(
                            model="gpt-4o-mini",
                            messages=[{"role": "user", "content": f"Source {index}?"}],
                        )
                        for index in range(3)
                    )
                )

            gathered = asyncio.run(fan_out())

    # chat, sync, reasoning model
    [plan] = child_calls(trace, "plan")
    assert plan.name == "ChatCompletion" and plan.usage.model == "o3-mini"
    usage = planned.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details is not None
    costs.append(
        assert_call(
            plan,
            model="o3-mini",
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cached=usage.prompt_tokens_details.cached_tokens or 0,
            reasoning=usage.completion_tokens_details.reasoning_tokens or 0,
        )
    )
    assert plan.own.reasoning_tokens and plan.own.cache_read_tokens  # both really exercised

    # chat, streamed: usage once, from the final chunk
    [draft] = child_calls(trace, "draft")
    final = chunks[-1].usage
    assert final is not None and final.prompt_tokens_details is not None
    assert sum(chunk.usage is not None for chunk in chunks) == 1
    costs.append(
        assert_call(
            draft,
            model="gpt-4o",
            input_tokens=final.prompt_tokens,
            output_tokens=final.completion_tokens,
            cached=final.prompt_tokens_details.cached_tokens or 0,
            reasoning=0,
        )
    )

    # Responses API, plain and streamed
    [summarised] = child_calls(trace, "summarise")
    assert summarised.name == "Response"
    assert summary.usage is not None
    costs.append(
        assert_call(
            summarised,
            model="gpt-4o-mini",
            input_tokens=summary.usage.input_tokens,
            output_tokens=summary.usage.output_tokens,
            cached=summary.usage.input_tokens_details.cached_tokens,
            reasoning=summary.usage.output_tokens_details.reasoning_tokens,
        )
    )
    [reviewed] = child_calls(trace, "review")
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    review_usage = completed.response.usage
    costs.append(
        assert_call(
            reviewed,
            model="gpt-4.1-mini",
            input_tokens=review_usage.input_tokens,
            output_tokens=review_usage.output_tokens,
            cached=review_usage.input_tokens_details.cached_tokens,
            reasoning=review_usage.output_tokens_details.reasoning_tokens,
        )
    )

    # embeddings: input tokens only
    [embedding] = child_calls(trace, "embed")
    assert embedding.usage.model == "text-embedding-3-small"
    assert embedding.own.input_tokens == embedded.usage.prompt_tokens
    embedding_cost = expected_cost("text-embedding-3-small", embedded.usage.prompt_tokens, 0)
    assert embedding.own.cost == embedding_cost
    costs.append(embedding_cost)

    # async fan-out: three calls, all under "research"
    research = child_calls(trace, "research")
    assert len(research) == 3
    by_tokens = sorted(node.own.input_tokens or 0 for node in research)
    assert by_tokens == sorted(reply.usage.prompt_tokens for reply in gathered)
    for reply in gathered:
        assert reply.usage is not None
        costs.append(
            expected_cost("gpt-4o-mini", reply.usage.prompt_tokens, reply.usage.completion_tokens)
        )
    [research_node] = [node for node in trace.nodes if node.name == "research"]
    assert research_node.subtotal.cost == sum(costs[-3:], Decimal(0))

    # every model call appears once, the root adds them all, exactly
    assert len(model_calls(trace)) == 8
    totals = trace.totals
    assert totals.model_calls == 8 and totals.unpriced_calls == 0 and totals.errors == 0
    assert totals.cost == sum(costs, Decimal(0))
    assert totals.input_tokens == sum(node.own.input_tokens or 0 for node in model_calls(trace))
    assert not trace.running

    frame = trace.to_dataframe()
    calls = frame[frame["model_call"].fillna(False).astype(bool)]
    assert len(calls) == 8
    assert set(calls["cost_source"]) == {"price table"}
    assert set(calls["priced_model"]) == {
        "openai/o3-mini",
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini",
        "openai/text-embedding-3-small",
    }


def _abandon_after_two(stream: Any) -> list[Any]:
    received = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 2:
            break
    return received


def test_stream_abandoned_after_two_chunks_still_ends_its_span(client: openai.OpenAI) -> None:
    with an.trace("abandon") as trace:
        with an.span("consumer", type="task"):
            stream = client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            assert len(_abandon_after_two(stream)) == 2
    # `stream` is still referenced here, so no garbage collection ended the span.
    [node] = model_calls(trace)
    assert not node.running and not trace.running
    assert node.record.status != "ERROR"
    assert node.record.attributes.get(integration.ABANDONED_STREAM) is True
    # The final chunk never arrived: tokens are unknown, the call is counted, unpriced.
    assert node.own.input_tokens is None and node.own.cost is None
    assert trace.totals.model_calls == 1 and trace.totals.unpriced_calls == 1
    # The HTTP stream was left open: reading on works exactly as without tracing.
    rest = list(stream)
    assert rest and rest[-1].usage is not None
    assert model_calls(trace)[0].own.input_tokens is None  # usage is not counted late


def test_async_stream_abandoned_after_two_chunks_still_ends_its_span(
    async_client: openai.AsyncOpenAI,
) -> None:
    kept: list[Any] = []

    async def consume() -> int:
        stream = await async_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        kept.append(stream)
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 2:
                break
        return received

    with an.trace("abandon async") as trace:
        assert asyncio.run(consume()) == 2
    [node] = model_calls(trace)
    assert not node.running and node.record.status != "ERROR"
    assert node.record.attributes.get(integration.ABANDONED_STREAM) is True
    assert kept


def test_dropped_stream_ends_when_collected(client: openai.OpenAI) -> None:
    def read_two() -> None:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        _abandon_after_two(stream)

    with an.trace("dropped") as trace:
        read_two()
        gc.collect()
        [node] = model_calls(trace)
        assert not node.running  # ended before the trace did
    assert integration.ABANDONED_STREAM not in model_calls(trace)[0].record.attributes


def test_stream_used_as_context_manager_and_closed_early(client: openai.OpenAI) -> None:
    with an.trace("closed") as trace:
        with client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ) as stream:
            next(iter(stream))
        [node] = model_calls(trace)
        assert not node.running
    assert model_calls(trace)[0].record.status != "ERROR"


def test_unknown_model_has_tokens_and_is_unpriced(client: openai.OpenAI) -> None:
    with an.trace("local") as trace:
        local = client.chat.completions.create(model="my-local-llama", messages=MESSAGES)
        priced = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert local.usage is not None and priced.usage is not None
    [unknown] = [node for node in model_calls(trace) if node.usage.model == "my-local-llama"]
    assert unknown.own.input_tokens == local.usage.prompt_tokens
    assert unknown.own.output_tokens == local.usage.completion_tokens
    assert unknown.own.cost is None and unknown.priced.source == "unpriced"
    assert unknown.own.unpriced_calls == 1
    totals = trace.totals
    assert totals.unpriced_calls == 1 and totals.model_calls == 2
    details = priced.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens
    assert totals.cost == expected_cost(
        "gpt-4o-mini",
        priced.usage.prompt_tokens,
        priced.usage.completion_tokens,
        cached=details.cached_tokens,
    )
    assert totals.total_tokens == local.usage.total_tokens + priced.usage.total_tokens
    frame = trace.to_dataframe().set_index("span_id")
    row = frame.loc[f"{unknown.span_id:016x}"]
    assert pd.isna(row["cost"]) and row["cost_source"] == "unpriced"
    assert row["input_tokens"] == local.usage.prompt_tokens


def _the_error(call: Any) -> BaseException:
    try:
        call()
    except BaseException as error:
        return error
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(
    ("model", "timeout", "error_type"),
    [("error-500", 10.0, openai.InternalServerError), ("slow-5", 0.3, openai.APITimeoutError)],
)
def test_server_errors_mark_the_span_and_reach_the_caller(
    client: openai.OpenAI, model: str, timeout: float, error_type: type[BaseException]
) -> None:
    def call() -> Any:
        return client.with_options(timeout=timeout).chat.completions.create(
            model=model, messages=MESSAGES
        )

    untraced = _the_error(call)  # outside any trace
    with pytest.raises(error_type) as raised:
        with an.trace("failing"), an.span("step", type="task"):
            call()
    assert type(raised.value) is type(untraced)
    assert str(raised.value) == str(untraced)
    trace = an.last_trace()
    assert trace is not None and trace.name == "failing"
    [node] = model_calls(trace)
    assert node.is_error and node.is_error_origin and not node.running
    assert error_type.__name__ in (node.record.status_message or "")
    assert trace.totals.errors == 1  # one origin, though three spans failed
    assert trace.totals.model_calls == 1
    assert node.usage.model == model  # the requested model, not "(unknown model)"
    if error_type is openai.InternalServerError:
        # Refused with an HTTP error response: providers bill nothing (rule 14).
        assert node.role == "failed model call"
        assert trace.totals.unpriced_calls == 0
    else:
        # A timeout may have been billed: it stays unpriced.
        assert node.role == "unreported model call"
        assert trace.totals.unpriced_calls == 1


def test_async_error_marks_the_span(async_client: openai.AsyncOpenAI) -> None:
    async def call() -> Any:
        return await async_client.chat.completions.create(model="error-503", messages=MESSAGES)

    with pytest.raises(openai.InternalServerError):
        with an.trace("failing async"):
            asyncio.run(call())
    trace = an.last_trace()
    assert trace is not None
    [node] = model_calls(trace)
    assert node.is_error_origin and trace.totals.errors == 1


def test_instrument_is_idempotent(client: openai.OpenAI) -> None:
    assert an.instrument_openai() is False
    assert an.instrument_openai() is False
    with an.trace("once") as trace:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(model_calls(trace)) == 1
    assert len(trace.nodes) == 2


def test_calls_outside_a_trace_are_not_kept(client: openai.OpenAI) -> None:
    before = len(get_collector().traces())
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(get_collector().traces()) == before


def test_instrument_on_load_follows_the_environment(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    an.uninstrument_openai()
    try:
        assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry
        with an.trace("off") as trace:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert model_calls(trace) == []
        monkeypatch.delenv(integration.INSTRUMENT_ON_LOAD_ENV, raising=False)
        assert integration.maybe_instrument_on_load() is False
        monkeypatch.setenv(integration.INSTRUMENT_ON_LOAD_ENV, "0")
        assert integration.maybe_instrument_on_load() is False
        assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry
        monkeypatch.setenv(integration.INSTRUMENT_ON_LOAD_ENV, "1")
        assert integration.maybe_instrument_on_load() is True
        with an.trace("on") as trace:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert len(model_calls(trace)) == 1
    finally:
        an.instrument_openai()


# -- the same rules for every vocabulary ------------------------------------------------
def _hand_made_span(name: str, attributes: dict[str, Any]) -> None:
    """A span written by another instrumentation: same provider, its own tracer."""
    get_collector()
    assert RUNTIME.tracing.provider is not None
    tracer = RUNTIME.tracing.provider.get_tracer("tests.other_instrumentation")
    with tracer.start_as_current_span(name, attributes=attributes):
        pass


def _genai(model: str, tokens: tuple[int, int, int, int]) -> dict[str, Any]:
    input_tokens, output_tokens, cached, reasoning = tokens
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "gen_ai.usage.cache_read.input_tokens": cached,
        "gen_ai.usage.reasoning.output_tokens": reasoning,
    }


def _genai_deprecated(model: str, tokens: tuple[int, int, int, int]) -> dict[str, Any]:
    input_tokens, output_tokens, cached, reasoning = tokens
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": model,
        "gen_ai.usage.prompt_tokens": input_tokens,
        "gen_ai.usage.completion_tokens": output_tokens,
        "gen_ai.usage.cache_read.input_tokens": cached,
        "gen_ai.usage.reasoning.output_tokens": reasoning,
    }


def _openinference(model: str, tokens: tuple[int, int, int, int]) -> dict[str, Any]:
    input_tokens, output_tokens, cached, reasoning = tokens
    return {
        "openinference.span.kind": "LLM",
        "llm.system": "openai",
        "llm.model_name": model,
        "llm.token_count.prompt": input_tokens,
        "llm.token_count.completion": output_tokens,
        "llm.token_count.prompt_details.cache_read": cached,
        "llm.token_count.completion_details.reasoning": reasoning,
    }


def _ours(model: str, tokens: tuple[int, int, int, int]) -> None:
    input_tokens, output_tokens, cached, reasoning = tokens
    with an.span("ours", type="llm"):
        an.record_usage(
            model=model,
            provider="openai",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached,
            reasoning_tokens=reasoning,
        )


@pytest.mark.parametrize(
    ("model", "tokens"),
    [("gpt-4o", (1200, 300, 1024, 0)), ("o3-mini", (900, 700, 512, 500))],
)
def test_every_vocabulary_is_costed_the_same_way(
    model: str, tokens: tuple[int, int, int, int]
) -> None:
    with an.trace("vocabularies") as trace:
        _ours(model, tokens)
        _hand_made_span("gen_ai", _genai(model, tokens))
        _hand_made_span("gen_ai deprecated", _genai_deprecated(model, tokens))
        _hand_made_span("openinference", _openinference(model, tokens))
    calls = model_calls(trace)
    assert [node.name for node in calls] == [
        "ours",
        "gen_ai",
        "gen_ai deprecated",
        "openinference",
    ]
    input_tokens, output_tokens, cached, reasoning = tokens
    cost = expected_cost(model, input_tokens, output_tokens, cached, reasoning)
    for node in calls:
        assert node.own.input_tokens == input_tokens, node.name
        assert node.own.output_tokens == output_tokens, node.name
        assert node.own.cache_read_tokens == cached, node.name
        assert node.own.reasoning_tokens == reasoning, node.name
        assert node.own.cost == cost, node.name
        assert node.priced.matched_model == f"openai/{model}", node.name
    assert trace.totals.cost == 4 * cost


def test_mixed_trace_rolls_up_without_double_counting(client: openai.OpenAI) -> None:
    genai_tokens = (1500, 200, 1024, 0)
    ours_tokens = (400, 60, 0, 0)
    with an.trace("mixed") as trace:
        with an.span("agent", type="agent") as agent:
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            _hand_made_span("chat gpt-4o", _genai("gpt-4o", genai_tokens))
            _ours("gpt-4o", ours_tokens)
            assert reply.usage is not None
            # A framework stamps its run total on the agent span (rule 3: a claim).
            agent.set_attributes(
                {
                    "gen_ai.usage.input_tokens": reply.usage.prompt_tokens + 1500 + 400,
                    "gen_ai.usage.output_tokens": reply.usage.completion_tokens + 200 + 60,
                }
            )
        # A model-call span of ours around another instrumentation's call: the lower
        # layer's usage counts, the router's differing claim is flagged (rules 2, 3).
        with an.span("router", type="llm"):
            an.record_usage(model="gpt-4o-mini", input_tokens=50, output_tokens=5)
            _hand_made_span("chat inner", _genai("gpt-4o-mini", (80, 10, 0, 0)))
        # A claim with nothing below it counts as own usage.
        with an.span("legacy tool", type="tool") as tool:
            tool.set_attributes({"llm.token_count.prompt": 30, "llm.token_count.completion": 3})

    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    by_name = {node.name: node for node in trace.nodes}
    agent_node = by_name["agent"]
    assert agent_node.role == "claim not counted" and agent_node.mismatch is None
    assert by_name["legacy tool"].role == "claim counted"
    assert by_name["router"].role == "model call wrapper"
    assert by_name["router"].mismatch is not None

    cached = reply.usage.prompt_tokens_details.cached_tokens or 0
    openinference_cost = expected_cost(
        "gpt-4o-mini", reply.usage.prompt_tokens, reply.usage.completion_tokens, cached
    )
    genai_cost = expected_cost("gpt-4o", 1500, 200, 1024)
    ours_cost = expected_cost("gpt-4o", 400, 60)
    assert agent_node.subtotal.cost == openinference_cost + genai_cost + ours_cost
    assert agent_node.subtotal.input_tokens == reply.usage.prompt_tokens + 1500 + 400
    router_cost = expected_cost("gpt-4o-mini", 80, 10)
    assert by_name["router"].subtotal.cost == router_cost
    assert by_name["router"].subtotal.input_tokens == 80

    totals = trace.totals
    assert totals.input_tokens == reply.usage.prompt_tokens + 1500 + 400 + 80 + 30
    assert totals.output_tokens == reply.usage.completion_tokens + 200 + 60 + 10 + 3
    assert totals.model_calls == 4
    # The legacy tool's claim has no model: counted, unpriced.
    assert totals.unpriced_calls == 1
    assert totals.cost == agent_node.subtotal.cost + router_cost
    frame = trace.to_dataframe()
    counted = frame["cost"].dropna()
    assert totals.cost is not None
    assert float(counted.sum()) == pytest.approx(float(totals.cost), rel=1e-12)


def test_a_wrong_claim_is_flagged_not_added() -> None:
    with an.trace("claim") as trace:
        with an.span("agent", type="agent") as agent:
            _hand_made_span("chat", _genai("gpt-4o", (100, 10, 0, 0)))
            agent.set_attributes({"llm.token_count.prompt": 999, "llm.token_count.completion": 9})
    agent_node = next(node for node in trace.nodes if node.name == "agent")
    assert agent_node.role == "claim not counted"
    assert agent_node.mismatch
    assert trace.totals.input_tokens == 100


def test_openai_notebook_runs_against_the_stand_in() -> None:
    """notebooks/openai.ipynb in a real kernel under nbval: every output is compared,
    except the interactive view's (it shows timings)."""
    run_nbval(
        "openai.ipynb",
        drop_env=("OPENAI_API_KEY", "OPENAI_BASE_URL", integration.INSTRUMENT_ON_LOAD_ENV),
        sanitize=False,
    )


def test_genai_agent_span_with_run_totals_is_a_claim() -> None:
    """OpenTelemetry GenAI agent spans (`invoke_agent`) carry their run's usage: a
    claim over the model calls below, never added to them."""
    with an.trace("genai agent") as trace:
        agent_attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "planner",
            "gen_ai.usage.input_tokens": 300,
            "gen_ai.usage.output_tokens": 30,
        }
        get_collector()
        assert RUNTIME.tracing.provider is not None
        tracer = RUNTIME.tracing.provider.get_tracer("tests.other_instrumentation")
        with tracer.start_as_current_span("invoke_agent planner", attributes=agent_attributes):
            _hand_made_span("chat a", _genai("gpt-4o", (100, 10, 0, 0)))
            _hand_made_span("chat b", _genai("gpt-4o", (200, 20, 0, 0)))
            _hand_made_span("execute_tool search", {"gen_ai.operation.name": "execute_tool"})
    by_name = {node.name: node for node in trace.nodes}
    assert by_name["invoke_agent planner"].role == "claim not counted"
    assert by_name["invoke_agent planner"].mismatch is None
    assert not by_name["execute_tool search"].usage.is_model_call
    assert trace.totals.input_tokens == 300 and trace.totals.output_tokens == 30
    assert trace.totals.model_calls == 2
    assert trace.totals.cost == expected_cost("gpt-4o", 100, 10) + expected_cost("gpt-4o", 200, 20)


# -- the official OpenTelemetry GenAI instrumentation ------------------------------------
OFFICIAL_SCRIPT = r"""
import asyncio, json, os, sys, warnings
import openai
import agenta_notebook as an
from agenta_notebook import demo
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

an.get_collector()  # our provider is the global one: the instrumentor's spans reach us
OpenAIInstrumentor().instrument()
messages = json.loads(sys.argv[1])
with demo.start() as server:
    os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
    client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)
    aclient = openai.AsyncOpenAI(base_url=server.base_url, max_retries=0, timeout=10)
    usages = []
    with an.trace("official") as trace:
        with an.span("agent", type="agent"):
            reply = client.chat.completions.create(model="gpt-4o", messages=messages)
            usages.append(reply.usage.model_dump())
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.usage is not None:
                    usages.append(chunk.usage.model_dump())

            async def fan_out():
                return await asyncio.gather(*(
                    aclient.chat.completions.create(model="gpt-4o-mini", messages=messages)
                    for _ in range(2)
                ))

            usages.extend(r.usage.model_dump() for r in asyncio.run(fan_out()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = an.instrument_openai()
    with an.trace("after") as after:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    nodes = [
        {
            "name": node.name,
            "parent": node.parent.name if node.parent is not None else None,
            "model_call": node.usage.is_model_call,
            "model": node.usage.model,
            "input": node.own.input_tokens,
            "output": node.own.output_tokens,
            "cost": str(node.own.cost),
            "matched": node.priced.matched_model if node.priced else None,
        }
        for node in trace.nodes
    ]
    print(json.dumps({
        "nodes": nodes,
        "usages": usages,
        "totals": {"cost": str(trace.totals.cost), "calls": trace.totals.model_calls,
                   "input": trace.totals.input_tokens, "output": trace.totals.output_tokens},
        "ours": ours,
        "warnings": [str(w.message) for w in caught],
        "after_calls": after.totals.model_calls,
    }))
"""


def test_official_genai_instrumentation_is_costed_the_same_way() -> None:
    """Spans of `opentelemetry-instrumentation-openai-v2` (gen_ai.* attributes), made by the
    real client against the stand-in, in a subprocess (instrumentors patch openai globally):
    each call once, under its parent, with the tokens the client saw and the table's price;
    and `instrument_openai()` refuses to add a second instrumentor on top (each call would
    otherwise be two nested model calls, both counted by rule 2)."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", OFFICIAL_SCRIPT, json.dumps(MESSAGES)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    calls = [node for node in data["nodes"] if node["model_call"]]
    assert len(calls) == 4 == len(data["usages"])
    assert all(node["parent"] == "agent" for node in calls)
    assert [node["model"] for node in calls].count("gpt-4o") == 1
    total = Decimal(0)
    # The async calls may end in either order: match calls to usages as multisets.
    seen = sorted((node["model"], node["input"], node["output"]) for node in calls)
    models = ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]
    wanted = sorted(
        (model, usage["prompt_tokens"], usage["completion_tokens"])
        for model, usage in zip(models, data["usages"], strict=True)
    )
    assert seen == wanted
    for node in calls:
        # this instrumentor version writes no cache-read or reasoning counts: the table
        # prices what it does write
        cost = expected_cost(node["model"], node["input"], node["output"])
        assert Decimal(node["cost"]) == cost, node
        assert node["matched"] == f"openai/{node['model']}"
        total += cost
    assert Decimal(data["totals"]["cost"]) == total
    assert data["totals"]["calls"] == 4
    assert data["totals"]["input"] == sum(u["prompt_tokens"] for u in data["usages"])
    assert data["ours"] is False
    assert any("opentelemetry-instrumentation-openai-v2" in w for w in data["warnings"])
    assert data["after_calls"] == 1
