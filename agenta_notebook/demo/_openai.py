"""The OpenAI side of the stand-in: chat completions, responses, embeddings."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agenta_notebook.demo._common import (
    CREATED,
    Reply,
    count_tokens,
    limit,
    new_id,
    pieces,
    reasoning_tokens,
    reply_text,
    text_of,
)

#: Models listed by `GET /v1/models`.
MODELS: Final = (
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "text-embedding-3-small",
    "my-local-llama",
)
_CACHE_BLOCK: Final = 8


def _message_tokens(text: str) -> int:
    # Like OpenAI's chat format: a few tokens of framing per message.
    return count_tokens(text) + 4


def _prompt_usage(prefix: Sequence[str], last: str) -> tuple[int, int]:
    """(prompt tokens, cached tokens) for a prompt made of a prefix and a last message."""
    prefix_tokens = sum(_message_tokens(text) for text in prefix)
    prompt_tokens = prefix_tokens + _message_tokens(last) + 3
    cached = (prefix_tokens // _CACHE_BLOCK) * _CACHE_BLOCK
    return prompt_tokens, cached


@dataclass(frozen=True, slots=True)
class _Answer:
    """One completion: text and the usage that goes with it."""

    model: str
    text: str
    truncated: bool
    prompt_tokens: int
    cached_tokens: int
    visible_tokens: int
    reasoning_tokens: int

    @property
    def completion_tokens(self) -> int:
        return self.visible_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _answer(model: str, prefix: Sequence[str], last: str, max_tokens: Any) -> _Answer:
    prompt_tokens, cached = _prompt_usage(prefix, last)
    text, truncated = limit(reply_text(model, last, "\n".join([*prefix, last])), max_tokens)
    visible = count_tokens(text)
    return _Answer(
        model=model,
        text=text,
        truncated=truncated,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        visible_tokens=visible,
        reasoning_tokens=reasoning_tokens(model, visible),
    )


# -- chat completions ---------------------------------------------------------------------
def _chat_prompt(body: Mapping[str, Any]) -> tuple[list[str], str]:
    messages = body.get("messages")
    texts = [
        text_of(message.get("content"))
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, Mapping)
    ]
    if not texts:
        return [], ""
    return texts[:-1], texts[-1]


def _chat_usage(answer: _Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": answer.cached_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completion(answer: _Answer, ident: str) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": CREATED,
        "model": answer.model,
        "system_fingerprint": "fp_agenta_demo",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer.text,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "length" if answer.truncated else "stop",
            }
        ],
        "usage": _chat_usage(answer),
    }


def _chat_chunks(answer: _Answer, ident: str, include_usage: bool) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": answer.model,
            "system_fingerprint": "fp_agenta_demo",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if include_usage:
            value["usage"] = None
        return value

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in pieces(answer.text):
        yield chunk({"content": piece}, None)
    yield chunk({}, "length" if answer.truncated else "stop")
    if include_usage:
        yield {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": answer.model,
            "system_fingerprint": "fp_agenta_demo",
            "choices": [],
            "usage": _chat_usage(answer),
        }


# -- responses ----------------------------------------------------------------------------
def _responses_prompt(body: Mapping[str, Any]) -> tuple[list[str], str]:
    prefix: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        prefix.append(instructions)
    given = body.get("input")
    if isinstance(given, str):
        return prefix, given
    texts = [
        text_of(item.get("content"))
        for item in (given if isinstance(given, list) else [])
        if isinstance(item, Mapping) and "content" in item
    ]
    if not texts:
        return prefix, ""
    return prefix + texts[:-1], texts[-1]


def _responses_usage(answer: _Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": answer.cached_tokens},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": answer.total_tokens,
    }


def _response_message(answer: _Answer, ident: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": ident.replace("resp_", "msg_"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _response(
    answer: _Answer, ident: str, body: Mapping[str, Any], *, done: bool = True
) -> dict[str, Any]:
    instructions = body.get("instructions")
    return {
        "id": ident,
        "object": "response",
        "created_at": CREATED,
        "status": ("incomplete" if answer.truncated else "completed") if done else "in_progress",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"}
        if done and answer.truncated
        else None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": answer.model,
        "output": [_response_message(answer, ident, answer.text, "completed")] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _responses_usage(answer) if done else None,
        "metadata": {},
    }


def _response_events(
    answer: _Answer, ident: str, body: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    item_id = ident.replace("resp_", "msg_")
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": _response(answer, ident, body, done=False),
        },
        {
            "type": "response.in_progress",
            "response": _response(answer, ident, body, done=False),
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {
                **_response_message(answer, ident, "", "in_progress"),
                "content": [],
            },
        },
        {
            "type": "response.content_part.added",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    events += [
        {
            "type": "response.output_text.delta",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": piece,
            "logprobs": [],
        }
        for piece in pieces(answer.text)
    ]
    events += [
        {
            "type": "response.output_text.done",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "text": answer.text,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": answer.text, "annotations": []},
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _response_message(answer, ident, answer.text, "completed"),
        },
        {"type": "response.completed", "response": _response(answer, ident, body)},
    ]
    for number, event in enumerate(events):
        yield {**event, "sequence_number": number}


# -- embeddings ---------------------------------------------------------------------------
def _vector(model: str, text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(f"{model}\n{text}".encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    raw = [byte / 255.0 - 0.5 for byte in digest[:dimensions]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]


def _embeddings(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    given = body.get("input")
    texts = [given] if isinstance(given, str) else list(given) if isinstance(given, list) else []
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions <= 0:
        dimensions = 16
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(texts):
        text = item if isinstance(item, str) else " ".join(str(token) for token in item)
        tokens += count_tokens(text)
        vector = _vector(model, text, dimensions)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- entry points -------------------------------------------------------------------------
def chat(body: Mapping[str, Any], model: str) -> Reply:
    """`POST /v1/chat/completions`."""
    prefix, last = _chat_prompt(body)
    answer = _answer(model, prefix, last, body.get("max_completion_tokens", body.get("max_tokens")))
    ident = new_id("chatcmpl-")
    if not body.get("stream"):
        return Reply(body=_chat_completion(answer, ident))
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    return Reply(
        events=((None, chunk) for chunk in _chat_chunks(answer, ident, include_usage)),
        done=True,
    )


def responses(body: Mapping[str, Any], model: str) -> Reply:
    """`POST /v1/responses`."""
    prefix, last = _responses_prompt(body)
    answer = _answer(model, prefix, last, body.get("max_output_tokens"))
    ident = new_id("resp_")
    if not body.get("stream"):
        return Reply(body=_response(answer, ident, body))
    return Reply(events=((event["type"], event) for event in _response_events(answer, ident, body)))


def embeddings(body: Mapping[str, Any], model: str) -> Reply:
    """`POST /v1/embeddings`."""
    return Reply(body=_embeddings(body, model))


def models() -> Reply:
    """`GET /v1/models`."""
    return Reply(
        body={
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": CREATED, "owned_by": "demo"}
                for name in MODELS
            ],
        }
    )


def error(status: int, message: str, kind: str) -> Reply:
    """An error in OpenAI's shape."""
    return Reply(
        status=status,
        body={"error": {"message": message, "type": kind, "param": None, "code": None}},
    )
