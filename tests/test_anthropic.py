"""Anthropic calls with the real `anthropic` client against the stand-in, traced by the
SDK's own spans (on by default since anthropic 2.1), alone and beside the OpenInference
and OpenLLMetry instrumentors.

Expected tokens come from the usage the server returned to the caller (Anthropic's
convention: `input_tokens` excludes cache reads and writes), and expected costs from
`genai_prices.calc_price` called here directly, never from our own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import genai_prices
import pytest
from openinference.instrumentation.anthropic import AnthropicInstrumentor as OpenInference
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor as OpenLLMetry

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.live import Trace

SDK_SCOPE = "com.anthropic.sdk.python"
OPENINFERENCE_SCOPE = "openinference.instrumentation.anthropic"
OPENLLMETRY_SCOPE = "opentelemetry.instrumentation.anthropic"
MODEL = "claude-sonnet-4-6"
SMALL_MODEL = "claude-haiku-4-5"
QUESTION: list[Any] = [{"role": "user", "content": "Why does a sailing boat heel in a gust?"}]


def _system(topic: str) -> list[Any]:
    """A system prompt marked for caching; a new `topic` is a prefix the cache has not seen."""
    text = f"You coach sailors about {topic}. Answer in two sentences, plainly and kindly. " * 4
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture()
def client(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> anthropic.Anthropic:
    # The SDK's spans are on unless this says otherwise when the client is made.
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    made = demo.anthropic_client(server, max_retries=0, timeout=10)
    assert made.open_telemetry["traces"]["enabled"]
    return made


@pytest.fixture()
def sdk_only() -> Iterator[None]:
    """No Anthropic instrumentor, whatever an earlier test left behind."""
    instrumentors = [OpenInference(), OpenLLMetry()]
    were_on = [one for one in instrumentors if one.is_instrumented_by_opentelemetry]
    for one in were_on:
        one.uninstrument()
    yield
    for one in were_on:
        one.instrument()


@pytest.fixture()
def openinference(sdk_only: None) -> Iterator[None]:
    OpenInference().instrument()
    yield
    OpenInference().uninstrument()


@pytest.fixture()
def openllmetry(sdk_only: None) -> Iterator[None]:
    OpenLLMetry().instrument()
    yield
    OpenLLMetry().uninstrument()


@dataclass(frozen=True)
class Billed:
    """The usage the server returned for one call, in Anthropic's convention."""

    model: str
    input_tokens: int  # neither read from nor written to the cache
    cache_write: int
    cache_read: int
    output_tokens: int

    @classmethod
    def of(cls, model: str, usage: Any) -> Billed:
        return cls(
            model=model,
            input_tokens=usage.input_tokens,
            cache_write=usage.cache_creation_input_tokens or 0,
            cache_read=usage.cache_read_input_tokens or 0,
            output_tokens=usage.output_tokens,
        )

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: the inclusive input count of the GenAI conventions."""
        return self.input_tokens + self.cache_write + self.cache_read

    @property
    def cost(self) -> Decimal:
        usage = genai_prices.Usage(
            input_tokens=self.prompt_tokens,  # genai-prices' input includes cache tokens
            cache_write_tokens=self.cache_write or None,
            cache_read_tokens=self.cache_read or None,
            output_tokens=self.output_tokens,
        )
        return genai_prices.calc_price(usage, self.model, provider_id="anthropic").total_price

    @property
    def cost_at_plain_input_rate(self) -> Decimal:
        usage = genai_prices.Usage(
            input_tokens=self.prompt_tokens, output_tokens=self.output_tokens
        )
        return genai_prices.calc_price(usage, self.model, provider_id="anthropic").total_price


def _streamed_usage(events: list[Any]) -> Any:
    """The final usage of a raw event stream: `message_delta`'s cumulative counts."""
    [start] = [event for event in events if event.type == "message_start"]
    [delta] = [event for event in events if event.type == "message_delta"]
    assert start.message.usage.output_tokens == 1  # the placeholder the real API sends
    return delta.usage


def _step(trace: Trace, name: str) -> SpanNode:
    [node] = [node for node in trace.nodes if node.name == name]
    return node


def _calls_below(trace: Trace, step: str) -> list[SpanNode]:
    return [node for node in _step(trace, step).walk() if node.usage.is_model_call]


def _counted(trace: Trace, step: str) -> SpanNode:
    """The one span of a step whose usage is counted: the SDK's own."""
    counted = [node for node in _calls_below(trace, step) if node.role == "model call"]
    assert len(counted) == 1, [(node.name, node.role) for node in _calls_below(trace, step)]
    [node] = counted
    assert node.record.scope == SDK_SCOPE and node.name == "anthropic.messages.create"
    return node


def _assert_counted(node: SpanNode, billed: Billed) -> None:
    own = node.own
    assert node.usage.model == billed.model
    assert own.model_calls == 1 and own.unpriced_calls == 0 and own.errors == 0
    assert own.input_tokens == billed.prompt_tokens  # inclusive, rule 5
    assert own.output_tokens == billed.output_tokens
    assert own.total_tokens == billed.prompt_tokens + billed.output_tokens
    assert (own.cache_write_tokens or 0) == billed.cache_write
    assert (own.cache_read_tokens or 0) == billed.cache_read
    assert own.cost == billed.cost
    assert node.priced.source == "price table"
    assert node.priced.matched_model is not None
    assert node.priced.matched_model.startswith("anthropic/")
    assert not node.warnings


def _cache_scenario(client: anthropic.Anthropic, topic: str) -> tuple[Trace, dict[str, Billed]]:
    """Plain, cache write, cache read, `messages.stream` and `create(stream=True)`, each
    under a step span of its own."""
    system = _system(topic)
    billed: dict[str, Billed] = {}
    with an.trace(f"anthropic {topic}") as trace:
        with an.span("plain", type="task"):
            reply = client.messages.create(model=SMALL_MODEL, max_tokens=300, messages=QUESTION)
            billed["plain"] = Billed.of(SMALL_MODEL, reply.usage)
        with an.span("cache write", type="task"):
            reply = client.messages.create(
                model=MODEL, max_tokens=300, system=system, messages=QUESTION
            )
            billed["cache write"] = Billed.of(MODEL, reply.usage)
        with an.span("cache read", type="task"):
            reply = client.messages.create(
                model=MODEL, max_tokens=300, system=system, messages=QUESTION
            )
            billed["cache read"] = Billed.of(MODEL, reply.usage)
        with an.span("helper stream", type="task"):
            with client.messages.stream(
                model=MODEL, max_tokens=300, system=system, messages=QUESTION
            ) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            assert text == final.content[0].text  # type: ignore[union-attr]
            billed["helper stream"] = Billed.of(MODEL, final.usage)
        with an.span("raw stream", type="task"):
            events = list(
                client.messages.create(
                    model=SMALL_MODEL, max_tokens=300, messages=QUESTION, stream=True
                )
            )
            billed["raw stream"] = Billed.of(SMALL_MODEL, _streamed_usage(events))
    # The scenario really exercises both cache paths.
    assert billed["cache write"].cache_write > 0 and billed["cache write"].cache_read == 0
    assert billed["cache read"].cache_read == billed["cache write"].cache_write
    assert billed["cache read"].cache_write == 0
    assert billed["helper stream"].cache_read > 0
    return trace, billed


def _assert_totals(trace: Trace, billed: dict[str, Billed]) -> None:
    totals = trace.totals
    assert totals.model_calls == len(billed)
    assert totals.unpriced_calls == 0 and totals.errors == 0
    assert totals.input_tokens == sum(one.prompt_tokens for one in billed.values())
    assert totals.output_tokens == sum(one.output_tokens for one in billed.values())
    assert totals.cache_write_tokens == sum(one.cache_write for one in billed.values())
    assert totals.cache_read_tokens == sum(one.cache_read for one in billed.values())
    assert totals.cost == sum((one.cost for one in billed.values()), Decimal(0))
    assert not trace.running


def test_sdk_spans_alone(client: anthropic.Anthropic, sdk_only: None) -> None:
    trace, billed = _cache_scenario(client, "trim")
    for step, one in billed.items():
        [node] = _calls_below(trace, step)
        assert node is _counted(trace, step)
        _assert_counted(node, one)
        assert _step(trace, step).subtotal.cost == one.cost
    # The cache write is priced at its own rate, not at the plain input rate.
    write = billed["cache write"]
    assert write.cost != write.cost_at_plain_input_rate
    read = billed["cache read"]
    assert read.cost < read.cost_at_plain_input_rate
    assert _counted(trace, "helper stream").record.attributes.get("gen_ai.request.stream")
    _assert_totals(trace, billed)
    assert not trace.summary().warnings


def test_sdk_spans_and_openinference(client: anthropic.Anthropic, openinference: None) -> None:
    trace, billed = _cache_scenario(client, "reefing")
    for step, one in billed.items():
        counted = _counted(trace, step)
        _assert_counted(counted, one)
        others = [node for node in _calls_below(trace, step) if node is not counted]
        assert [node.record.scope for node in others] == [OPENINFERENCE_SCOPE]
        [other] = others
        if counted.parent is other:
            # `messages.create`: OpenInference's span is current while the SDK sends the
            # request, so the SDK's span is its child: a wrapper over one call (rules 2, 3).
            assert other.role == "model call wrapper"
            assert other.own.model_calls == 0 and not other.warnings
        else:
            # `messages.stream` sends the request after OpenInference's span stopped being
            # current: the two are siblings, the same call side by side (rule 13).
            assert step == "helper stream"
            assert other.parent is counted.parent
            assert other.role == "recorded twice" and other.duplicate_of is counted
            assert any("recorded twice" in warning for warning in other.warnings)
            assert other.own.model_calls == 0 and not other.own.input_tokens
        assert _step(trace, step).subtotal.cost == one.cost
        assert _step(trace, step).subtotal.model_calls == 1
    _assert_totals(trace, billed)


def test_sdk_spans_and_openllmetry(client: anthropic.Anthropic, openllmetry: None) -> None:
    trace, billed = _cache_scenario(client, "anchoring")
    for step, one in billed.items():
        counted = _counted(trace, step)
        _assert_counted(counted, one)
        [other] = [node for node in _calls_below(trace, step) if node is not counted]
        # OpenLLMetry's span is never current during the request: always a sibling,
        # with the same response id.
        assert other.record.scope == OPENLLMETRY_SCOPE and other.name == "anthropic.chat"
        assert other.parent is counted.parent
        assert other.record.attributes.get("gen_ai.response.id") == counted.record.attributes.get(
            "gen_ai.response.id"
        )
        assert other.role == "recorded twice" and other.duplicate_of is counted
        assert any("recorded twice" in warning for warning in other.warnings)
        assert _step(trace, step).subtotal.model_calls == 1
        assert _step(trace, step).subtotal.cost == one.cost
    _assert_totals(trace, billed)


def test_three_recorders_still_count_each_call_once(
    client: anthropic.Anthropic, openinference: None, openllmetry: None
) -> None:
    trace, billed = _cache_scenario(client, "tacking")
    for step, one in billed.items():
        _assert_counted(_counted(trace, step), one)
        assert _step(trace, step).subtotal.model_calls == 1
        assert _step(trace, step).subtotal.cost == one.cost
    _assert_totals(trace, billed)


def test_async_fan_out_with_the_sdk_spans(
    server: demo.DemoServer, sdk_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)

    async def fan_out() -> list[Any]:
        client = demo.async_anthropic_client(server, max_retries=0, timeout=10)
        return await asyncio.gather(
            *(
                client.messages.create(
                    model=SMALL_MODEL,
                    max_tokens=200,
                    messages=[{"role": "user", "content": f"Name knot number {index}."}],
                )
                for index in range(4)
            )
        )

    with an.trace("fan out") as trace:
        with an.span("crew", type="agent"):
            replies = asyncio.run(fan_out())
    assert len({reply.id for reply in replies}) == 4
    crew = _step(trace, "crew")
    assert [node.role for node in crew.children] == ["model call"] * 4
    expected = [Billed.of(SMALL_MODEL, reply.usage) for reply in replies]
    assert crew.subtotal.model_calls == 4
    assert crew.subtotal.cost == sum((one.cost for one in expected), Decimal(0))


def _raise(call: Any) -> BaseException:
    try:
        call()
    except anthropic.APIStatusError as error:
        return error
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(
    ("recorders", "model", "error_type"),
    [
        ((), "error-500", anthropic.InternalServerError),
        ((), "error-529", anthropic.OverloadedError),
        ((OpenInference,), "error-500", anthropic.InternalServerError),
        ((OpenLLMetry,), "error-500", anthropic.InternalServerError),
    ],
    ids=["sdk-500", "sdk-529", "openinference-500", "openllmetry-500"],
)
def test_failed_call_is_one_error_not_unpriced(
    client: anthropic.Anthropic,
    sdk_only: None,
    recorders: tuple[type[OpenInference] | type[OpenLLMetry], ...],
    model: str,
    error_type: type[BaseException],
) -> None:
    def call() -> Any:
        return client.messages.create(model=model, max_tokens=50, messages=QUESTION)

    untraced = _raise(call)
    for recorder in recorders:
        recorder().instrument()
    try:
        with an.trace("failing") as trace:
            with an.span("step", type="task"):
                failure = _raise(call)
    finally:
        for recorder in recorders:
            recorder().uninstrument()
    assert type(failure) is type(untraced) is error_type
    assert isinstance(failure, anthropic.APIStatusError)
    assert isinstance(untraced, anthropic.APIStatusError)
    assert failure.status_code == untraced.status_code
    assert isinstance(failure.body, dict) and isinstance(untraced.body, dict)
    assert failure.body["error"] == untraced.body["error"]  # only the request ids differ
    step = _step(trace, "step")
    [failed] = [node for node in step.walk() if node.role == "failed model call"]
    assert failed.record.scope == SDK_SCOPE and failed.is_error
    assert failed.usage.model == model  # the requested model, not "(unknown model)"
    assert failed.own.model_calls == 1 and failed.own.unpriced_calls == 0
    calls = [node for node in step.walk() if node.usage.is_model_call]
    assert len(calls) == 1 + len(recorders)
    totals = trace.totals
    assert totals.model_calls == 1
    assert totals.errors == 1
    assert totals.unpriced_calls == 0
    assert totals.cost is None or totals.cost == 0
    assert not totals.input_tokens
