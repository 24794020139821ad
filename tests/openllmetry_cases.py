"""The cases of `test_openllmetry.py`, run by it in an interpreter of their own (not
collected by the main run: the file name does not start with `test_`).

OpenLLMetry's (traceloop's) OpenAI instrumentor, `opentelemetry-instrumentation-openai`,
with the real `openai` client against the stand-in, on a reasoning model. Its
`uninstrument()` leaves `Completions.create` wrapped (0.62.4 passes the module, not the
class, to `unwrap`), so a second `instrument()` in the same process records every call
twice: these cases instrument it once, in a process of their own, and never share it
with the other tests.

Its spans carry `gen_ai.usage.*` keys plus `gen_ai.usage.reasoning_tokens` (its own key,
not the GenAI conventions' `gen_ai.usage.reasoning.output_tokens`). Expected tokens come
from the usage the server returned, expected costs from `genai_prices.calc_price` called
here directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import openai
import pytest
from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInference
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OpenAIV2

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.live import Trace

SCOPE = "opentelemetry.instrumentation.openai.v1"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a patient physics tutor. Explain with one example."},
    {"role": "user", "content": "Why is the sky blue and the sunset red?"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture()
def client(server: demo.DemoServer) -> openai.OpenAI:
    return demo.client(server, max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def openllmetry() -> None:
    """OpenLLMetry's instrumentor alone, instrumented once for the whole process."""
    assert not OpenInference().is_instrumented_by_opentelemetry
    assert not OpenAIV2().is_instrumented_by_opentelemetry
    OpenLLMetry().instrument()


def expected_cost(model: str, prompt: int, completion: int, cached: int, reasoning: int) -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=prompt,
        cache_read_tokens=cached or None,
        output_tokens=completion,
        output_reasoning_tokens=reasoning or None,
    )
    return genai_prices.calc_price(usage, model, provider_id="openai").total_price


def _only_call(trace: Trace, step: str) -> SpanNode:
    [parent] = [node for node in trace.nodes if node.name == step]
    calls = [node for node in parent.walk() if node.usage.is_model_call]
    assert len(calls) == 1, [(node.name, node.record.scope) for node in calls]
    [node] = calls
    assert node.record.scope == SCOPE and node.role == "model call"
    return node


def _assert_figures(
    node: SpanNode,
    *,
    model: str,
    prompt: int,
    completion: int,
    cached: int,
    reasoning: int | None,
) -> Decimal:
    own = node.own
    assert node.usage.model == model
    assert (own.input_tokens, own.output_tokens) == (prompt, completion)
    assert own.total_tokens == prompt + completion
    assert own.cache_read_tokens == cached
    assert own.reasoning_tokens == reasoning
    cost = expected_cost(model, prompt, completion, cached, reasoning or 0)
    assert own.cost == cost
    assert node.priced.source == "price table"
    assert own.model_calls == 1 and own.unpriced_calls == 0
    assert not node.warnings
    return cost


def test_reasoning_model_tokens_and_costs(client: openai.OpenAI, openllmetry: None) -> None:
    with an.trace("openllmetry reasoning") as trace:
        with an.span("chat", type="task"):
            chat = client.chat.completions.create(model="o3-mini", messages=MESSAGES)
        with an.span("response", type="task"):
            response = client.responses.create(
                model="o4-mini", instructions=MESSAGES[0]["content"], input="Why red?"
            )
        with an.span("stream", type="task"):
            chunks = list(
                client.chat.completions.create(
                    model="o4-mini",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
    costs: list[Decimal] = []

    usage = chat.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning  # the stand-in's reasoning model really reports some
    node = _only_call(trace, "chat")
    assert node.record.attributes.get("gen_ai.usage.reasoning_tokens") == reasoning
    costs.append(
        _assert_figures(
            node,
            model="o3-mini",
            prompt=usage.prompt_tokens,
            completion=usage.completion_tokens,  # reasoning included (inclusive convention)
            cached=usage.prompt_tokens_details.cached_tokens or 0,
            reasoning=reasoning,
        )
    )

    assert response.usage is not None
    node = _only_call(trace, "response")
    assert response.usage.output_tokens_details.reasoning_tokens
    costs.append(
        _assert_figures(
            node,
            model="o4-mini",
            prompt=response.usage.input_tokens,
            completion=response.usage.output_tokens,
            cached=response.usage.input_tokens_details.cached_tokens,
            reasoning=response.usage.output_tokens_details.reasoning_tokens,
        )
    )

    # Streamed: OpenLLMetry records the final chunk's counts but no reasoning tokens. They
    # are part of the output tokens and priced at the output rate, so the cost is exact.
    final = chunks[-1].usage
    assert final is not None and final.completion_tokens_details is not None
    assert final.prompt_tokens_details is not None
    node = _only_call(trace, "stream")
    assert "gen_ai.usage.reasoning_tokens" not in node.record.attributes
    cost = _assert_figures(
        node,
        model="o4-mini",
        prompt=final.prompt_tokens,
        completion=final.completion_tokens,
        cached=final.prompt_tokens_details.cached_tokens or 0,
        reasoning=None,
    )
    assert cost == expected_cost(
        "o4-mini",
        final.prompt_tokens,
        final.completion_tokens,
        final.prompt_tokens_details.cached_tokens or 0,
        final.completion_tokens_details.reasoning_tokens or 0,
    )
    costs.append(cost)

    totals = trace.totals
    assert totals.model_calls == 3 and totals.unpriced_calls == 0 and totals.errors == 0
    assert totals.cost == sum(costs, Decimal(0))
    assert (
        totals.reasoning_tokens == reasoning + response.usage.output_tokens_details.reasoning_tokens
    )
    assert not trace.running


def test_failed_call_is_one_error_not_unpriced(client: openai.OpenAI, openllmetry: None) -> None:
    with an.trace("openllmetry failure") as trace:
        with an.span("step", type="task"):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="error-500", messages=MESSAGES)
    node = _only_call_failed(trace)
    assert node.usage.model == "error-500"
    totals = trace.totals
    assert totals.model_calls == 1 and totals.errors == 1 and totals.unpriced_calls == 0


def _only_call_failed(trace: Trace) -> SpanNode:
    calls = [node for node in trace.nodes if node.usage.is_model_call]
    assert len(calls) == 1
    [node] = calls
    assert node.record.scope == SCOPE and node.is_error
    assert node.role == "failed model call"
    return node
