"""An offline stand-in for the OpenAI and Anthropic APIs, so the notebooks run with no key
and no network.

>>> from agenta_notebook import demo
>>> server = demo.start()                    # http://127.0.0.1:<free port>/v1
>>> client = demo.client(server)             # demo.client(): the real provider if
>>> # OPENAI_API_KEY is set, else a stand-in shared by the session
>>> reply = client.chat.completions.create(
...     model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour"}]
... )
>>> reply.usage.prompt_tokens > 0
True
>>> claude = demo.anthropic_client(server)   # the same server speaks Anthropic's API
>>> message = claude.messages.create(
...     model="claude-sonnet-4-6", max_tokens=100,
...     messages=[{"role": "user", "content": "Name a colour"}],
... )
>>> message.usage.input_tokens > 0
True
>>> server.stop()

The server speaks enough of the OpenAI HTTP API for the official `openai` client:

- `POST /v1/chat/completions`, plain or streamed (server-sent events, with the usage
  chunk at the end when `stream_options={"include_usage": True}`);
- `POST /v1/responses`, plain or streamed;
- `POST /v1/embeddings` (float or base64 vectors);
- `GET /v1/models`.

and enough of Anthropic's for the official `anthropic` client, on the same port:

- `POST /v1/messages`, plain or streamed (`message_start`, `content_block_*`,
  `message_delta` with the final usage, `message_stop`), with prompt caching;
- `POST /v1/messages/count_tokens`.

Answers are deterministic: the same request always gets the same text and usage (but
every response has an id of its own, as with the real providers). Usage is realistic
in shape: tokens are counted from the input text.

- OpenAI: every message before the last one (and the Responses API's `instructions`)
  is treated as a cached prefix, so `prompt_tokens_details.cached_tokens` is filled;
  models named like OpenAI's reasoning models (`o1`, `o3-mini`, `o4-mini`, `gpt-5...`)
  also report `completion_tokens_details.reasoning_tokens`, included in the completion
  tokens.
- Anthropic: a content block (tool, system block or message block) carrying
  `cache_control` ends a cacheable prefix. The first request with a prefix writes it
  (`cache_creation_input_tokens`), a later one with the same prefix and model reads it
  (`cache_read_input_tokens`); the cache lives as long as the server. As in Anthropic's
  API, `input_tokens` excludes both: the whole prompt is the sum of the three.

Some model names provoke faults, for tests and demos of error handling, on both APIs:

- `error-500` (any `error-<status>`: `error-529` is Anthropic's "overloaded",
  `error-400` a bad request): the server answers with that HTTP status and an error
  body in the API's own shape;
- `slow` (or `slow-<seconds>`, default 3 s): the server waits before answering, so a
  client `timeout` fires.

Any other model name is served, including names no price table knows
(`my-local-llama`): its tokens are counted and its cost is unpriced.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from agenta_notebook.demo._common import CREATED, DEFAULT_SLOW_SECONDS, DEMO_API_KEY, count_tokens
from agenta_notebook.demo._server import DemoServer, start

if TYPE_CHECKING:
    import anthropic
    import openai

__all__ = [
    "CREATED",
    "DEFAULT_SLOW_SECONDS",
    "DEMO_API_KEY",
    "DemoServer",
    "anthropic_client",
    "async_anthropic_client",
    "async_client",
    "client",
    "count_tokens",
    "start",
]

_shared: DemoServer | None = None
_shared_lock = threading.Lock()


def _shared_server() -> DemoServer:
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = start()
        return _shared


def _target(server: DemoServer | None, key_variable: str) -> DemoServer | None:
    """The stand-in to talk to, or None for the real provider (its key is set)."""
    if server is None and os.environ.get(key_variable):
        return None
    return server if server is not None else _shared_server()


def client(server: DemoServer | None = None, **kwargs: Any) -> openai.OpenAI:
    """An `openai.OpenAI` client for `server` if given; otherwise for the real provider
    when `OPENAI_API_KEY` is set, else for a stand-in started on first use and shared
    by the session.

    Keyword arguments go to `openai.OpenAI` (`timeout=`, `max_retries=`, ...).
    """
    import openai

    target = _target(server, "OPENAI_API_KEY")
    if target is None:
        return openai.OpenAI(**kwargs)
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return openai.OpenAI(base_url=target.base_url, **kwargs)


def async_client(server: DemoServer | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
    """Like `client()`, for `openai.AsyncOpenAI`."""
    import openai

    target = _target(server, "OPENAI_API_KEY")
    if target is None:
        return openai.AsyncOpenAI(**kwargs)
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return openai.AsyncOpenAI(base_url=target.base_url, **kwargs)


def anthropic_client(server: DemoServer | None = None, **kwargs: Any) -> anthropic.Anthropic:
    """An `anthropic.Anthropic` client for `server` if given; otherwise for the real
    provider when `ANTHROPIC_API_KEY` is set, else for the stand-in shared by the session
    (the same one as `client()`'s).

    Keyword arguments go to `anthropic.Anthropic` (`timeout=`, `max_retries=`, ...).
    """
    import anthropic

    target = _target(server, "ANTHROPIC_API_KEY")
    if target is None:
        return anthropic.Anthropic(**kwargs)
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return anthropic.Anthropic(base_url=target.anthropic_base_url, **kwargs)


def async_anthropic_client(
    server: DemoServer | None = None, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    """Like `anthropic_client()`, for `anthropic.AsyncAnthropic`."""
    import anthropic

    target = _target(server, "ANTHROPIC_API_KEY")
    if target is None:
        return anthropic.AsyncAnthropic(**kwargs)
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return anthropic.AsyncAnthropic(base_url=target.anthropic_base_url, **kwargs)
