"""LangChain, LiteLLM and Google GenAI traced with their real packages and instrumentors.

Every call goes to a stand-in on 127.0.0.1: the project's OpenAI and Anthropic stand-in
(`agenta_notebook.demo`) and, for Gemini, a minimal `generateContent` server defined
below. Expected tokens come from the usage each library hands back to the caller (what
the server returned), expected costs from `genai_prices.calc_price` called here directly.

The rows of issue 10 pinned here:

- LangChain `ChatOpenAI` alone (openinference-instrumentation-langchain): exact.
- The same plus `instrument_openai()`: each call is recorded by two scopes side by side;
  it counts once, and the LangChain span is marked "recorded twice" (rule 13).
- LiteLLM alone (openinference-instrumentation-litellm): exact; plus `instrument_openai()`:
  the OpenAI-routed calls count once.
- Google GenAI (openinference-instrumentation-google-genai): exact, cache-read and
  thinking tokens included.
- `an.instrument()` over all of them in a fresh process: what it prints, the calls of
  every library in one trace each counted once, a second call that skips everything.
"""

from __future__ import annotations

import os

# LiteLLM downloads its model price map when it is imported, unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import genai_prices
import litellm
import pytest
from google import genai
from google.genai import types as genai_types
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from loopback_guard import Guard
from nbval_run import run_nbval

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.live import Trace

ROOT = Path(__file__).resolve().parent.parent
LANGCHAIN_SCOPE = "openinference.instrumentation.langchain"
LITELLM_SCOPE = "openinference.instrumentation.litellm"
OPENAI_SCOPE = "openinference.instrumentation.openai"
GOOGLE_SCOPE = "openinference.instrumentation.google_genai"
TOPICS = ("tides", "glaciers", "volcanoes", "monsoons", "coral reefs", "auroras")


# -- a minimal Gemini stand-in -----------------------------------------------------------
def _words(text: str) -> int:
    return len(text.split())


class _GeminiHandler(BaseHTTPRequestHandler):
    """`POST .../models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.

    Usage is derived from the request: prompt tokens = 4 + 2 per word of every text
    part; the system instruction's part of them is reported as implicitly cached; a
    `gemini-2.5-*` model also reports thinking tokens (billed as output, not part of
    `candidatesTokenCount`). Every response has an id of its own.
    """

    protocol_version = "HTTP/1.1"
    server: _GeminiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        path = self.path.split("?", 1)[0]
        model, _, method = path.rsplit("/", 1)[-1].partition(":")
        self.server.requests.append((method, model))
        prompt = " ".join(
            part.get("text", "")
            for content in body.get("contents", [])
            for part in content.get("parts", [])
        )
        system = " ".join(
            part.get("text", "") for part in (body.get("systemInstruction") or {}).get("parts", [])
        )
        prompt_tokens = 4 + 2 * (_words(prompt) + _words(system))
        cached = 2 * _words(system)
        answer = f"A short answer about {prompt[:60]}, from {model}."
        candidates = 3 + 2 * _words(answer)
        thoughts = 17 + _words(prompt) if model.startswith("gemini-2.5") else 0
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt_tokens + candidates + thoughts,
        }
        if cached:
            usage["cachedContentTokenCount"] = cached
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        response_id = f"gemini-{next(self.server.ids)}"
        if method == "generateContent":
            self._send(
                "application/json",
                json.dumps(self._response(answer, "STOP", usage, model, response_id)).encode(),
            )
        elif method == "streamGenerateContent":
            words = answer.split(" ")
            middle = len(words) // 2
            first = {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": 2 * middle,
                "totalTokenCount": prompt_tokens + 2 * middle,
            }
            chunks = [
                self._response(" ".join(words[:middle]) + " ", None, first, model, response_id),
                self._response(" ".join(words[middle:]), "STOP", usage, model, response_id),
            ]
            payload = b"".join(f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks)
            self._send("text/event-stream", payload)
        else:
            self.send_error(404)

    @staticmethod
    def _response(
        text: str, finish: str | None, usage: Mapping[str, Any], model: str, response_id: str
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": dict(usage),
            "modelVersion": model,
            "responseId": response_id,
        }

    def _send(self, content_type: str, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GeminiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GeminiHandler)
        self.requests: list[tuple[str, str]] = []
        self.ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[_GeminiServer]:
    server = _GeminiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture()
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and record) every connection or name lookup that would leave 127.0.0.1."""
    guard = Guard().install()
    try:
        yield guard.refused
    finally:
        guard.uninstall()
    assert guard.refused == [], f"something tried to leave the machine: {guard.refused}"


@pytest.fixture()
def openai_instrumented() -> Iterator[None]:
    assert an.instrument_openai() is True
    yield
    an.uninstrument_openai()


def instrumented(library: str) -> Iterator[None]:
    outcomes = an.instrument(library)
    assert outcomes[library].status == "instrumented", outcomes[library]
    assert not outcomes[library].on_import  # imported by this module already
    yield
    assert an.uninstrument(library) == [library]


@pytest.fixture()
def langchain_instrumented() -> Iterator[None]:
    yield from instrumented("langchain")


@pytest.fixture()
def litellm_instrumented() -> Iterator[None]:
    yield from instrumented("litellm")


@pytest.fixture()
def google_instrumented() -> Iterator[None]:
    yield from instrumented("google-genai")


# -- expected figures ------------------------------------------------------------------------
class Expected:
    """Sums of what the server returned, priced here with genai-prices."""

    def __init__(self) -> None:
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read = 0
        self.reasoning = 0
        self.cost = Decimal(0)

    def add(
        self,
        model: str,
        provider: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        reasoning: int = 0,
    ) -> None:
        usage = genai_prices.Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read or None,
            output_reasoning_tokens=reasoning or None,
        )
        self.cost += genai_prices.calc_price(usage, model, provider_id=provider).total_price
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cache_read += cache_read
        self.reasoning += reasoning

    def add_openai(self, model: str, usage: Mapping[str, Any]) -> None:
        """`usage` as OpenAI's API returns it (cached and reasoning tokens included)."""
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        self.add(
            model,
            "openai",
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            cache_read=prompt_details.get("cached_tokens") or 0,
            reasoning=completion_details.get("reasoning_tokens") or 0,
        )

    def check(self, trace: Trace, *, cost_rel: Decimal = Decimal(0)) -> None:
        totals = trace.totals
        assert totals.model_calls == self.calls
        assert totals.input_tokens == self.input_tokens
        assert totals.output_tokens == self.output_tokens
        assert totals.total_tokens == self.input_tokens + self.output_tokens
        assert (totals.cache_read_tokens or 0) == self.cache_read
        assert (totals.reasoning_tokens or 0) == self.reasoning
        assert totals.unpriced_calls == 0 and totals.errors == 0
        assert totals.cost is not None
        if cost_rel:
            assert abs(totals.cost - self.cost) <= self.cost * cost_rel, (totals.cost, self.cost)
        else:
            assert totals.cost == self.cost
        counted = [node for node in trace.nodes if node.own.model_calls]
        assert len(counted) == self.calls


def nodes_of(trace: Trace, scope: str) -> list[SpanNode]:
    return [node for node in trace.nodes if node.record.scope == scope]


def calls_of(trace: Trace, scope: str) -> list[SpanNode]:
    return [node for node in nodes_of(trace, scope) if node.usage.is_model_call]


# -- LangChain -------------------------------------------------------------------------------
def chat_chain(server: demo.DemoServer, model: str = "gpt-4o-mini") -> Any:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a geography tutor. Answer in two sentences, plainly."),
            ("user", "Explain {topic} to a curious ten-year-old."),
        ]
    )
    model_client = ChatOpenAI(
        model=model, base_url=server.base_url, api_key="sk-stand-in", max_retries=0, timeout=10
    )
    return prompt | model_client


def run_langchain(server: demo.DemoServer, expected: Expected) -> list[AIMessage]:
    """Six calls: a batch of four (in LangChain's thread pool) and two invokes."""
    chain = chat_chain(server)
    replies = list(
        chain.batch([{"topic": topic} for topic in TOPICS[:4]], config={"max_concurrency": 2})
    )
    with an.span("follow-ups", type="chain"):
        replies += [chain.invoke({"topic": topic}) for topic in TOPICS[4:]]
    for reply in replies:
        assert isinstance(reply, AIMessage)
        expected.add_openai("gpt-4o-mini", reply.response_metadata["token_usage"])
    return replies


def test_langchain_alone_is_exact(
    server: demo.DemoServer, langchain_instrumented: None, loopback_only: list[Any]
) -> None:
    expected = Expected()
    with an.trace("langchain") as trace:
        run_langchain(server, expected)
    assert expected.calls == 6 and expected.cache_read > 0
    expected.check(trace)
    calls = calls_of(trace, LANGCHAIN_SCOPE)
    assert len(calls) == 6
    assert all(node.role == "model call" and not node.warnings for node in calls)
    assert not any(node.warnings for node in trace.nodes)


def test_langchain_with_instrumented_openai_counts_each_call_once(
    server: demo.DemoServer,
    langchain_instrumented: None,
    openai_instrumented: None,
    loopback_only: list[Any],
) -> None:
    expected = Expected()
    with an.trace("langchain + openai") as trace:
        run_langchain(server, expected)
    expected.check(trace)  # 6 calls, not 12; tokens and cost once
    openai_calls = calls_of(trace, OPENAI_SCOPE)
    langchain_calls = calls_of(trace, LANGCHAIN_SCOPE)
    assert len(openai_calls) == 6 and len(langchain_calls) == 6
    # The client library's span is the one closest to the HTTP request: it counts.
    assert all(node.role == "model call" for node in openai_calls)
    for node in langchain_calls:
        assert node.role == "recorded twice"
        assert node.own.model_calls == 0 and node.own.input_tokens is None
        assert node.duplicate_of in openai_calls
        assert any("recorded twice" in warning for warning in node.warnings), node.warnings
    assert {id(node.duplicate_of) for node in langchain_calls} == {id(n) for n in openai_calls}


# -- LiteLLM ---------------------------------------------------------------------------------
LITELLM_MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You are a travel agent. Answer with one concrete tip."},
    {"role": "user", "content": "How do I pack for {place}?"},
]


def litellm_messages(place: str) -> list[dict[str, str]]:
    return [
        LITELLM_MESSAGES[0],
        {"role": "user", "content": LITELLM_MESSAGES[1]["content"].format(place=place)},
    ]


def run_litellm(server: demo.DemoServer, expected: Expected) -> None:
    """Four OpenAI-routed calls: plain, streamed with usage, async, a reasoning model."""
    target = {"api_base": server.base_url, "api_key": "sk-stand-in"}
    plain = litellm.completion(
        model="openai/gpt-4o-mini", messages=litellm_messages("Lisbon"), **target
    )
    expected.add_openai("gpt-4o-mini", plain.usage.model_dump())
    chunks = list(
        litellm.completion(
            model="openai/gpt-4o",
            messages=litellm_messages("Oslo"),
            stream=True,
            stream_options={"include_usage": True},
            **target,
        )
    )
    [usage] = [chunk.usage for chunk in chunks if getattr(chunk, "usage", None) is not None]
    expected.add_openai("gpt-4o", usage.model_dump())

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                litellm.acompletion(
                    model="openai/gpt-4o-mini", messages=litellm_messages("Quito"), **target
                ),
                litellm.acompletion(
                    model="openai/o3-mini", messages=litellm_messages("Nairobi"), **target
                ),
            )
        )

    quito, nairobi = asyncio.run(both())
    expected.add_openai("gpt-4o-mini", quito.usage.model_dump())
    expected.add_openai("o3-mini", nairobi.usage.model_dump())


# LiteLLM reports its own cost on some spans (`llm.cost.total`, a float computed from its
# bundled price map); a span's reported cost wins (rule 6), so the total may differ from
# genai-prices by float rounding only.
LITELLM_COST_REL = Decimal("1e-12")


def test_litellm_uses_its_local_price_map() -> None:
    from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info

    assert get_model_cost_map_source_info()["source"] == "local"


def test_litellm_alone_is_exact(
    server: demo.DemoServer, litellm_instrumented: None, loopback_only: list[Any]
) -> None:
    expected = Expected()
    with an.trace("litellm") as trace:
        run_litellm(server, expected)
    assert expected.calls == 4 and expected.cache_read > 0 and expected.reasoning > 0
    expected.check(trace, cost_rel=LITELLM_COST_REL)
    calls = calls_of(trace, LITELLM_SCOPE)
    assert len(calls) == 4 and all(node.role == "model call" for node in calls)
    assert not any(node.warnings for node in trace.nodes)


def test_litellm_with_instrumented_openai_counts_each_call_once(
    server: demo.DemoServer,
    litellm_instrumented: None,
    openai_instrumented: None,
    loopback_only: list[Any],
) -> None:
    expected = Expected()
    with an.trace("litellm + openai") as trace:
        run_litellm(server, expected)
    expected.check(trace, cost_rel=LITELLM_COST_REL)
    openai_calls = calls_of(trace, OPENAI_SCOPE)
    litellm_calls = calls_of(trace, LITELLM_SCOPE)
    assert len(openai_calls) == 4 and len(litellm_calls) == 4
    assert all(node.role == "model call" for node in openai_calls)
    # LiteLLM's span is over the OpenAI client's (a wrapper, rules 2 and 3) or beside it
    # (recorded twice, rule 13): either way it adds nothing.
    for node in litellm_calls:
        assert node.role in ("model call wrapper", "recorded twice"), node.role
        assert node.own.model_calls == 0 and node.own.input_tokens is None
        assert node.mismatch is None


# -- Google GenAI ----------------------------------------------------------------------------
def test_google_genai_is_exact(
    gemini_server: _GeminiServer, google_instrumented: None, loopback_only: list[Any]
) -> None:
    client = genai.Client(
        api_key="stand-in-key",
        http_options=genai_types.HttpOptions(base_url=gemini_server.base_url, timeout=10_000),
    )
    expected = Expected()

    def add(model: str, usage: Any) -> None:
        thoughts = usage.thoughts_token_count or 0
        expected.add(
            model,
            "google",
            input_tokens=usage.prompt_token_count,  # includes the cached tokens
            output_tokens=usage.candidates_token_count + thoughts,  # thinking is billed as output
            cache_read=usage.cached_content_token_count or 0,
            reasoning=thoughts,
        )

    with an.trace("gemini") as trace:
        reply = client.models.generate_content(
            model="gemini-2.0-flash", contents="Name three rivers of Africa."
        )
        add("gemini-2.0-flash", reply.usage_metadata)
        thinking = client.models.generate_content(
            model="gemini-2.5-flash",
            contents="Plan a three-day walk in the Alps.",
            config=genai_types.GenerateContentConfig(
                system_instruction="You are a mountain guide who answers in lists."
            ),
        )
        add("gemini-2.5-flash", thinking.usage_metadata)
        chunks = list(
            client.models.generate_content_stream(
                model="gemini-2.0-flash", contents="Describe a desert at night."
            )
        )
        add("gemini-2.0-flash", chunks[-1].usage_metadata)

        async def later() -> Any:
            return await client.aio.models.generate_content(
                model="gemini-2.5-flash", contents="Why is the sea salty?"
            )

        add("gemini-2.5-flash", asyncio.run(later()).usage_metadata)
    assert [method for method, _ in gemini_server.requests[-4:]] == [
        "generateContent",
        "generateContent",
        "streamGenerateContent",
        "generateContent",
    ]
    assert expected.calls == 4 and expected.cache_read > 0 and expected.reasoning > 0
    expected.check(trace)
    calls = calls_of(trace, GOOGLE_SCOPE)
    assert len(calls) == 4 and all(node.role == "model call" for node in calls)
    assert all(node.priced.source == "price table" for node in calls)
    assert not any(node.warnings for node in trace.nodes)


# -- an.instrument() over the whole stack ---------------------------------------------------
SUPPORTED = ("openai", "anthropic", "litellm", "langchain", "google-genai")
INSTRUMENTORS = {
    "openai": "openinference-instrumentation-openai",
    "litellm": "openinference-instrumentation-litellm",
    "langchain": "openinference-instrumentation-langchain",
    "google-genai": "openinference-instrumentation-google-genai",
}


def test_instrument_traces_the_whole_stack_once(
    server: demo.DemoServer,
    gemini_server: _GeminiServer,
    loopback_only: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    first = an.instrument()
    try:
        printed = capsys.readouterr().out.splitlines()
        # Every library is imported by this module already: instrumented now, not on import.
        assert printed == [
            f"{library}: instrumented with {INSTRUMENTORS[library]}"
            if library != "anthropic"
            else "anthropic: traces itself (the SDK emits its own spans)"
            for library in SUPPORTED
        ], "was something left instrumented by another test?"
        assert list(first) == list(SUPPORTED)
        assert first["anthropic"].status == "traces itself"
        assert all(first[name].status == "instrumented" for name in INSTRUMENTORS)

        expected = Expected()
        chat = ChatOpenAI(
            model="gpt-4o-mini", base_url=server.base_url, api_key="sk-x", max_retries=0
        )
        claude = anthropic.Anthropic(
            base_url=server.anthropic_base_url, api_key="sk-x", max_retries=0
        )
        gemini = genai.Client(
            api_key="k", http_options=genai_types.HttpOptions(base_url=gemini_server.base_url)
        )
        with an.trace("stack") as trace:
            for topic in ("rain", "snow"):
                reply = chat.invoke(f"Say something about {topic}.")
                expected.add_openai("gpt-4o-mini", reply.response_metadata["token_usage"])
            answer = litellm.completion(
                model="openai/gpt-4o",
                messages=[{"role": "user", "content": "Hello there"}],
                api_base=server.base_url,
                api_key="sk-x",
            )
            expected.add_openai("gpt-4o", answer.usage.model_dump())
            message = claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=200,
                messages=[{"role": "user", "content": "Name a colour."}],
            )
            usage = message.usage
            read = usage.cache_read_input_tokens or 0
            written = usage.cache_creation_input_tokens or 0
            expected.add(
                "claude-haiku-4-5",
                "anthropic",
                input_tokens=usage.input_tokens + read + written,  # Anthropic's excludes them
                output_tokens=usage.output_tokens,
                cache_read=read,
            )
            reply_g = gemini.models.generate_content(
                model="gemini-2.0-flash", contents="Name a river."
            )
            metadata = reply_g.usage_metadata
            assert metadata is not None
            expected.add(
                "gemini-2.0-flash",
                "google",
                input_tokens=metadata.prompt_token_count or 0,
                output_tokens=metadata.candidates_token_count or 0,
            )
        # Two LangChain calls (each also recorded by the OpenAI instrumentor), one LiteLLM
        # call (over the OpenAI client's), one Anthropic (the SDK's own span), one Gemini.
        expected.check(trace)
        counted = sorted(node.record.scope or "" for node in trace.nodes if node.own.model_calls)
        assert counted == sorted([OPENAI_SCOPE] * 3 + ["com.anthropic.sdk.python", GOOGLE_SCOPE])
        twice = [node.record.scope for node in trace.nodes if node.role == "recorded twice"]
        assert twice == [LANGCHAIN_SCOPE] * 2

        second = an.instrument()
        assert capsys.readouterr().out.splitlines() == [
            f"{library}: already instrumented by {INSTRUMENTORS[library]}"
            if library != "anthropic"
            else "anthropic: traces itself (the SDK emits its own spans)"
            for library in SUPPORTED
        ]
        assert {name: outcome.status for name, outcome in second.items()} == {
            "openai": "already instrumented",
            "anthropic": "traces itself",
            "litellm": "already instrumented",
            "langchain": "already instrumented",
            "google-genai": "already instrumented",
        }
    finally:
        undone = an.uninstrument()
    assert sorted(undone) == sorted(INSTRUMENTORS)
    assert an.uninstrument() == []
    with an.trace("after") as after:
        chat.invoke("Anyone there?")
    assert after.totals.model_calls == 0  # nothing records LangChain or OpenAI any more


# -- the notebook ------------------------------------------------------------------------------
def test_frameworks_notebook_validates_with_nbval() -> None:
    """notebooks/frameworks.ipynb (built by tests/notebooks/build_frameworks.py) in a real
    kernel under nbval: every output is compared (ids through tests/nbval_sanitize.cfg),
    except the live view's."""
    run_nbval(
        "frameworks.ipynb", drop_env=("OPENAI_", "ANTHROPIC_", "LITELLM_", "AGENTA_NOTEBOOK_")
    )
