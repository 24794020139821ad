"""The Anthropic side of the stand-in: the Messages API (`POST /v1/messages`).

Usage follows Anthropic's convention, not the OpenTelemetry GenAI one: `input_tokens`
counts only the input tokens that were neither read from nor written to the prompt
cache, so the whole prompt is `input_tokens + cache_creation_input_tokens +
cache_read_input_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agenta_notebook.demo._common import (
    Reply,
    count_tokens,
    limit,
    new_id,
    pieces,
    reply_text,
    text_of,
)

#: The `error.type` of Anthropic's error envelope for each HTTP status.
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
#: Tokens of framing around every content block (role markers, separators).
BLOCK_FRAMING: Final = 4
#: Tokens that end every prompt (the assistant's turn), never cached.
PROMPT_END: Final = 3
MAX_BREAKPOINTS: Final = 4


@dataclass(frozen=True, slots=True)
class _Block:
    """One cacheable unit of a prompt, in Anthropic's cache order (tools, system, messages)."""

    key: str  # what the block holds, for the cache
    tokens: int
    breakpoint: bool  # carries `cache_control`
    ttl: str  # of its cache entry: "5m" or "1h"


def _block(kind: str, value: Any, text: str) -> _Block:
    control = value.get("cache_control") if isinstance(value, Mapping) else None
    ttl = control.get("ttl") if isinstance(control, Mapping) else None
    return _Block(
        key=f"{kind}\n{text}",
        tokens=count_tokens(text) + BLOCK_FRAMING,
        breakpoint=isinstance(control, Mapping),
        ttl=ttl if ttl == "1h" else "5m",
    )


def _part_text(part: Any) -> str:
    """The text of a content block: its text, or the block as JSON (tool use, results)."""
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        text = part.get("text")
        if isinstance(text, str):
            return text
        return json.dumps(
            {key: value for key, value in part.items() if key != "cache_control"},
            sort_keys=True,
            default=str,
        )
    return ""


def _prompt_blocks(body: Mapping[str, Any]) -> list[_Block]:
    blocks: list[_Block] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        blocks.append(_block("tool", tool, _part_text(tool)))
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append(_block("system", None, system))
    elif isinstance(system, list):
        blocks.extend(_block("system", part, _part_text(part)) for part in system)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role"))
        content = message.get("content")
        if isinstance(content, list):
            blocks.extend(_block(role, part, _part_text(part)) for part in content)
        else:
            blocks.append(_block(role, None, text_of(content)))
    return blocks


@dataclass(frozen=True, slots=True)
class CacheUse:
    """How a prompt met the cache: tokens read, and tokens written per time to live."""

    read: int = 0
    written_5m: int = 0
    written_1h: int = 0

    @property
    def written(self) -> int:
        return self.written_5m + self.written_1h


class PromptCache:
    """The prompt cache of one server: prefixes written by earlier requests (they never
    expire while the server runs), per model, like Anthropic's prompt caching.

    A block with `cache_control` ends a cacheable prefix. A request reads the longest of
    its prefixes that is cached and writes the rest up to its last `cache_control` block;
    there is no minimum length.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefixes: set[str] = set()

    def use(self, model: str, blocks: Sequence[_Block]) -> CacheUse:
        digest = hashlib.sha256(model.encode())
        ends: list[tuple[int, str, str]] = []  # (tokens up to here, prefix key, ttl)
        position = 0
        for block in blocks:
            digest.update(b"\0" + block.key.encode())
            position += block.tokens
            if block.breakpoint:
                ends.append((position, digest.hexdigest(), block.ttl))
        with self._lock:
            read = max((end for end, key, _ in ends if key in self._prefixes), default=0)
            self._prefixes.update(key for _, key, _ in ends)
        written = {"5m": 0, "1h": 0}
        start = read
        for end, _, ttl in ends:
            if end > start:
                written[ttl] += end - start
                start = end
        return CacheUse(read=read, written_5m=written["5m"], written_1h=written["1h"])


def _usage(input_tokens: int, cache: CacheUse, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.written_5m,
            "ephemeral_1h_input_tokens": cache.written_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _question(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(_part_text(part) for part in content)
            return text_of(content)
    return ""


def _invalid(body: Mapping[str, Any], blocks: Sequence[_Block]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    breakpoints = sum(block.breakpoint for block in blocks)
    if breakpoints > MAX_BREAKPOINTS:
        return (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )
    return None


def messages(body: Mapping[str, Any], model: str, cache: PromptCache) -> Reply:
    """`POST /v1/messages`, plain or streamed."""
    blocks = _prompt_blocks(body)
    problem = _invalid(body, blocks)
    if problem is not None:
        return error(400, problem)
    use = cache.use(model, blocks)
    prompt_tokens = sum(block.tokens for block in blocks) + PROMPT_END
    input_tokens = prompt_tokens - use.read - use.written
    prompt = "\n".join(block.key for block in blocks)
    text, truncated = limit(reply_text(model, _question(body), prompt), body.get("max_tokens"))
    output_tokens = count_tokens(text)
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": _usage(input_tokens, use, output_tokens),
    }
    headers = {"request-id": new_id("req_")}
    if not body.get("stream"):
        return Reply(body=message, headers=headers)
    return Reply(events=_events(message, text), headers=headers)


def _events(message: Mapping[str, Any], text: str) -> Iterator[tuple[str, Any]]:
    """The server-sent events of a streamed message, as the real API sends them: usage
    (with a placeholder of 1 output token) in `message_start`, the final cumulative usage
    in `message_delta`."""
    usage = message["usage"]
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": started},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        },
        {"type": "ping"},
    ]
    events += [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        for piece in pieces(text)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {
                "input_tokens": usage["input_tokens"],
                "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                "cache_read_input_tokens": usage["cache_read_input_tokens"],
                "output_tokens": usage["output_tokens"],
            },
        },
        {"type": "message_stop"},
    ]
    for event in events:
        yield event["type"], event


def count(body: Mapping[str, Any]) -> Reply:
    """`POST /v1/messages/count_tokens`: the whole prompt, cache or not."""
    blocks = _prompt_blocks(body)
    if not isinstance(body.get("messages"), list):
        return error(400, "messages: Field required")
    return Reply(body={"input_tokens": sum(block.tokens for block in blocks) + PROMPT_END})


def error(status: int, message: str) -> Reply:
    """An error in Anthropic's shape, with its request id."""
    request_id = new_id("req_")
    return Reply(
        status=status,
        body={
            "type": "error",
            "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id,
        },
        headers={"request-id": request_id},
    )
