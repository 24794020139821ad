"""The offline OpenAI stand-in, driven by the real `openai` client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

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
