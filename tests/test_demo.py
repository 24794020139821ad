"""The offline OpenAI and Anthropic stand-in, driven by the real `openai` and `anthropic`
clients over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from agenta_notebook import demo


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture()
def client(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> openai.OpenAI:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")
    return openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)


SYSTEM = "You are a careful assistant. Answer in two sentences, cite nothing, stay polite."
QUESTION = "Why do leaves change colour in autumn?"


def _messages(question: str = QUESTION) -> list[Any]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_serves_only_loopback(server: demo.DemoServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


def test_chat_completion_is_deterministic_with_counted_usage(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=_messages())
    second = client.chat.completions.create(model="gpt-4o-mini", messages=_messages())
    other = client.chat.completions.create(model="gpt-4o-mini", messages=_messages("Hi?"))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    usage = first.usage
    assert usage is not None
    # Prompt tokens grow with the input; total is input + output.
    assert other.usage is not None and other.usage.prompt_tokens < usage.prompt_tokens
    expected_prompt = demo.count_tokens(SYSTEM) + demo.count_tokens(QUESTION) + 4 + 4 + 3
    assert usage.prompt_tokens == expected_prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The system prompt is a cached prefix: a multiple of 8, not more than it.
    details = usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert 0 < details.cached_tokens <= demo.count_tokens(SYSTEM) + 4
    assert details.cached_tokens % 8 == 0
    text = first.choices[0].message.content or ""
    assert usage.completion_tokens == demo.count_tokens(text)
    completion = usage.completion_tokens_details
    assert completion is not None and completion.reasoning_tokens == 0


def test_reasoning_models_report_reasoning_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="o3-mini", messages=_messages())
    usage = reply.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    visible = demo.count_tokens(reply.choices[0].message.content or "")
    assert reasoning > 0
    assert usage.completion_tokens == visible + reasoning  # inclusive convention


def test_max_tokens_truncates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o", messages=_messages(), max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_stream_with_usage_in_final_chunk(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o", messages=_messages())
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=_messages(),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    with_usage = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and not chunks[-1].choices
    assert with_usage[0].usage == plain.usage
    without = list(
        client.chat.completions.create(model="gpt-4o", messages=_messages(), stream=True)
    )
    assert all(chunk.usage is None for chunk in without)


def test_responses_plain_and_streamed(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input=QUESTION)
    assert response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    events = list(
        client.responses.create(
            model="gpt-4o-mini", instructions=SYSTEM, input=QUESTION, stream=True
        )
    )
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == response.output_text
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == response.usage


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    as_base64 = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    as_float = client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert len(as_base64.data) == 2
    assert as_base64.usage.prompt_tokens == 3
    for decoded, plain in zip(as_base64.data, as_float.data, strict=True):
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)


def test_unknown_model_is_served(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="my-local-llama", messages=_messages())
    assert reply.model == "my-local-llama"
    assert reply.usage is not None and reply.usage.total_tokens > 0


def test_error_model_answers_with_its_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="error-500", messages=_messages())
    assert raised.value.status_code == 500
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="error-429", messages=_messages())


def test_slow_model_lets_a_client_timeout_fire(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="slow-5", messages=_messages()
        )


def test_bad_requests_get_json_errors(server: demo.DemoServer) -> None:
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions", data=b"not json", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400
    assert "error" in json.loads(raised.value.read())


def test_async_client_fan_out(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")

    async def fan_out() -> list[int]:
        client = openai.AsyncOpenAI(base_url=server.base_url, max_retries=0, timeout=10)
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="gpt-4o-mini", messages=_messages(f"q{i}"))
                for i in range(5)
            )
        )
        return [reply.usage.total_tokens for reply in replies if reply.usage is not None]

    assert len(asyncio.run(fan_out())) == 5


def test_client_helpers_use_the_stand_in_without_a_key(
    server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = demo.client(server, max_retries=0)
    assert str(client.base_url).rstrip("/") == server.base_url
    before = len(server.requests)
    client.chat.completions.create(model="gpt-4o", messages=_messages())
    assert server.requests[before:] == [("/v1/chat/completions", "gpt-4o")]
    assert str(demo.async_client(server).base_url).rstrip("/") == server.base_url


def test_client_helpers_use_the_real_provider_with_a_key(
    server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the client's configuration is checked: no request is sent.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-real-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert demo.client().base_url.host == "api.openai.com"
    assert demo.async_client().base_url.host == "api.openai.com"
    # An explicit server wins over the key.
    assert str(demo.client(server).base_url).rstrip("/") == server.base_url


def test_client_helpers_share_one_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    first, second = demo.client(max_retries=0), demo.async_client()
    assert first.base_url == second.base_url
    assert first.base_url.host == "127.0.0.1"
    reply = first.chat.completions.create(model="gpt-4o", messages=_messages())
    assert reply.usage is not None and reply.usage.total_tokens > 0


def test_stop_frees_the_port_and_ends_waiting_requests() -> None:
    server = demo.start()
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-dummy", max_retries=0)
    errors: list[BaseException] = []

    def slow_call() -> None:
        try:
            client.chat.completions.create(model="slow-30", messages=_messages())
        except BaseException as error:
            errors.append(error)

    import threading

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert errors and isinstance(errors[0], openai.APIConnectionError)
    assert not server.running
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=_messages())


def test_every_openai_response_has_an_id_of_its_own(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=_messages())
    second = client.chat.completions.create(model="gpt-4o-mini", messages=_messages())
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.id != second.id and first.id.startswith("chatcmpl-")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=_messages(), stream=True))
    assert len({chunk.id for chunk in chunks}) == 1  # one id across the chunks of one call
    assert chunks[0].id not in (first.id, second.id)
    responses = [client.responses.create(model="gpt-4o-mini", input=QUESTION) for _ in range(2)]
    assert responses[0].id != responses[1].id and responses[0].id.startswith("resp_")
    assert responses[0].output_text == responses[1].output_text


# -- Anthropic ------------------------------------------------------------------------------
@pytest.fixture()
def claude(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> anthropic.Anthropic:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-dummy-for-the-stand-in")
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, max_retries=0, timeout=10, open_telemetry=False
    )


def _cached_system(text: str, ttl: str | None = None) -> list[Any]:
    control: dict[str, str] = {"type": "ephemeral"}
    if ttl is not None:
        control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": control}]


def _prompt_tokens(*block_texts: str) -> int:
    # Every content block: its tokens and 4 of framing; 3 more end the prompt.
    return sum(demo.count_tokens(text) + 4 for text in block_texts) + 3


def test_anthropic_message_has_counted_usage_and_a_unique_id(
    claude: anthropic.Anthropic, server: demo.DemoServer
) -> None:
    before = len(server.requests)
    first = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, system=SYSTEM, messages=_messages()[1:]
    )
    second = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, system=SYSTEM, messages=_messages()[1:]
    )
    assert server.requests[before:] == [("/v1/messages", "claude-sonnet-4-6")] * 2
    assert first.type == "message" and first.role == "assistant"
    assert first.model == "claude-sonnet-4-6" and first.stop_reason == "end_turn"
    [block] = first.content
    assert block.type == "text" and block.text
    assert second.content == first.content and second.usage == first.usage  # deterministic
    assert first.id != second.id and first.id.startswith("msg_")  # but ids are unique
    usage = first.usage
    assert usage.input_tokens == _prompt_tokens(SYSTEM, QUESTION)
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    assert usage.output_tokens == demo.count_tokens(block.text)
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-6", system=SYSTEM, messages=_messages()[1:]
    )
    assert counted.input_tokens == usage.input_tokens
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=_messages()[1:]
    )
    assert raw.headers["request-id"].startswith("req_")


def test_anthropic_prompt_cache_writes_then_reads(claude: anthropic.Anthropic) -> None:
    system = _cached_system("You answer questions about trees. " * 6)
    text = system[0]["text"]

    def ask(model: str = "claude-sonnet-4-6", question: str = QUESTION) -> Any:
        return claude.messages.create(
            model=model,
            max_tokens=200,
            system=system,
            messages=[{"role": "user", "content": question}],
        ).usage

    written = ask()
    prefix = demo.count_tokens(text) + 4
    assert written.cache_creation_input_tokens == prefix
    assert written.cache_read_input_tokens == 0
    assert written.cache_creation is not None
    assert written.cache_creation.ephemeral_5m_input_tokens == prefix
    # Anthropic's convention: input_tokens is what was neither written nor read.
    assert written.input_tokens == _prompt_tokens(text, QUESTION) - prefix
    read = ask()
    assert read.cache_read_input_tokens == prefix and read.cache_creation_input_tokens == 0
    assert read.input_tokens == written.input_tokens
    # Another question after the same prefix reads it too; another model has its own cache.
    assert ask(question="Why is bark rough?").cache_read_input_tokens == prefix
    other = ask(model="claude-haiku-4-5")
    assert other.cache_creation_input_tokens == prefix and other.cache_read_input_tokens == 0


def test_anthropic_cache_reads_the_longest_prefix_and_writes_the_rest(
    claude: anthropic.Anthropic,
) -> None:
    tool = {
        "name": "lookup_tide",
        "description": "The tide at a harbour, by name.",
        "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}}},
        "cache_control": {"type": "ephemeral"},
    }
    system = _cached_system("You plan sailing trips around tides and winds. " * 3)
    history = "Earlier we discussed the route from Brest to Camaret in detail."
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": history,
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ],
        },
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "When should we leave?"},
    ]
    first = claude.messages.create(
        model="claude-opus-4-6", max_tokens=100, tools=[tool], system=system, messages=messages[2:]
    ).usage
    tools_and_system = first.cache_creation_input_tokens or 0
    assert tools_and_system > 0 and first.cache_read_input_tokens == 0
    second = claude.messages.create(
        model="claude-opus-4-6", max_tokens=100, tools=[tool], system=system, messages=messages
    ).usage
    assert second.cache_read_input_tokens == tools_and_system
    history_tokens = demo.count_tokens(history) + 4
    assert second.cache_creation_input_tokens == history_tokens
    assert second.cache_creation is not None
    assert second.cache_creation.ephemeral_1h_input_tokens == history_tokens
    assert second.cache_creation.ephemeral_5m_input_tokens == 0
    total = claude.messages.count_tokens(
        model="claude-opus-4-6", tools=[tool], system=system, messages=messages
    ).input_tokens
    assert second.input_tokens + tools_and_system + history_tokens == total


def test_anthropic_streams_the_same_message(claude: anthropic.Anthropic) -> None:
    system = _cached_system("You explain weather to children, simply. " * 4)
    kwargs: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "system": system,
        "messages": _messages()[1:],
    }
    plain = claude.messages.create(**kwargs)  # writes the cache
    events = list(claude.messages.create(**kwargs, stream=True))  # reads it
    types = [event.type for event in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert types.count("content_block_delta") > 1
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.id != plain.id and start.message.content == []
    # message_start carries the input usage and a placeholder output count...
    assert start.message.usage.output_tokens == 1
    assert start.message.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens
    # ...message_delta the final cumulative usage.
    assert delta.usage.output_tokens == plain.usage.output_tokens
    assert delta.usage.input_tokens == plain.usage.input_tokens
    assert delta.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens
    assert delta.delta.stop_reason == "end_turn"
    text = "".join(
        event.delta.text
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == plain.content[0].text  # type: ignore[union-attr]
    with claude.messages.stream(**kwargs) as stream:
        assert "".join(stream.text_stream) == text
        final = stream.get_final_message()
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens


def test_anthropic_max_tokens_truncates(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=_messages()[1:]
    )
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 5


@pytest.mark.parametrize(
    ("model", "error_type", "kind"),
    [
        ("error-500", anthropic.InternalServerError, "api_error"),
        ("error-529", anthropic.OverloadedError, "overloaded_error"),
        ("error-400", anthropic.BadRequestError, "invalid_request_error"),
        ("error-429", anthropic.RateLimitError, "rate_limit_error"),
    ],
)
def test_anthropic_error_models(
    claude: anthropic.Anthropic, model: str, error_type: type[anthropic.APIStatusError], kind: str
) -> None:
    with pytest.raises(error_type) as raised:
        claude.messages.create(model=model, max_tokens=10, messages=_messages()[1:])
    error = raised.value
    assert error.status_code == int(model.removeprefix("error-"))
    assert isinstance(error.body, dict) and error.body["type"] == "error"
    assert error.body["error"]["type"] == kind
    assert error.request_id is not None and error.request_id.startswith("req_")


def test_anthropic_slow_model_lets_a_client_timeout_fire(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APITimeoutError):
        claude.with_options(timeout=0.3).messages.create(
            model="slow-5", max_tokens=10, messages=_messages()[1:]
        )


def test_anthropic_bad_requests_get_anthropic_errors(server: demo.DemoServer) -> None:
    def post(body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{server.anthropic_base_url}/v1/messages",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        return raised.value.code, json.loads(raised.value.read())

    status, body = post({"model": "claude-haiku-4-5", "messages": _messages()[1:]})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    too_many = [
        {"type": "text", "text": f"part {index}", "cache_control": {"type": "ephemeral"}}
        for index in range(5)
    ]
    status, body = post(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "system": too_many,
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    assert status == 400 and "maximum of 4 blocks" in body["error"]["message"]


def test_anthropic_async_client_fan_out(
    server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    async def fan_out() -> list[Any]:
        client = demo.async_anthropic_client(server, max_retries=0, open_telemetry=False)
        return await asyncio.gather(
            *(
                client.messages.create(
                    model="claude-haiku-4-5", max_tokens=50, messages=_messages(f"q{index}")[1:]
                )
                for index in range(5)
            )
        )

    replies = asyncio.run(fan_out())
    assert len({reply.id for reply in replies}) == 5
    assert all(reply.usage.output_tokens > 0 for reply in replies)


def test_anthropic_client_helpers(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    given = demo.anthropic_client(server, max_retries=0)
    assert str(given.base_url).rstrip("/") == server.anthropic_base_url
    assert given.api_key == demo.DEMO_API_KEY
    reply = given.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=_messages()[1:])
    assert reply.usage.input_tokens > 0
    # Without a key, the stand-in shared with `demo.client()`, on the same port.
    shared, shared_async = demo.anthropic_client(), demo.async_anthropic_client()
    assert shared.base_url.host == "127.0.0.1" and shared.base_url == shared_async.base_url
    assert shared.base_url.port == demo.client().base_url.port
    # With a key, the real provider (only the configuration is checked: nothing is sent);
    # an explicit server still wins.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-dummy-real-key")
    assert demo.anthropic_client().base_url.host == "api.anthropic.com"
    assert demo.async_anthropic_client().base_url.host == "api.anthropic.com"
    assert str(demo.anthropic_client(server).base_url).rstrip("/") == server.anthropic_base_url


def test_fan_out_is_served_at_the_configured_latency(
    server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 concurrent calls to a model that answers after 0.5 s each take under 2x that:
    the server accepts them all at once (a listen backlog of 5 made most of them wait
    for the client's SYN retry, a second or more)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")
    latency = 0.5

    async def timed(client: openai.AsyncOpenAI, index: int) -> float:
        started = time.perf_counter()
        await client.chat.completions.create(
            model=f"slow-{latency}", messages=_messages(f"q{index}")
        )
        return time.perf_counter() - started

    async def fan_out() -> list[float]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, max_retries=0, timeout=30
        ) as client:
            return await asyncio.gather(*(timed(client, i) for i in range(50)))

    took = sorted(asyncio.run(fan_out()))
    assert took[0] >= latency  # the server did wait: the figure below means something
    slow = [round(seconds, 2) for seconds in took if seconds > 2 * latency]
    assert not slow, f"{len(slow)} of 50 calls took over {2 * latency} s: {slow}"
