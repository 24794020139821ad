"""An offline stand-in for the OpenAI API, so the notebooks run with no key and no network.

>>> from agenta_notebook import demo
>>> server = demo.start()                    # http://127.0.0.1:<free port>/v1
>>> client = demo.client(server)             # demo.client(): the real provider if
>>> # OPENAI_API_KEY is set, else a stand-in shared by the session
>>> reply = client.chat.completions.create(
...     model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour"}]
... )
>>> reply.usage.prompt_tokens > 0
True
>>> server.stop()

The server speaks enough of the OpenAI HTTP API for the official `openai` client:

- `POST /v1/chat/completions`, plain or streamed (server-sent events, with the usage
  chunk at the end when `stream_options={"include_usage": True}`);
- `POST /v1/responses`, plain or streamed;
- `POST /v1/embeddings` (float or base64 vectors);
- `GET /v1/models`.

Answers are deterministic: the same request always gets the same text and usage.
Usage is realistic in shape: prompt tokens are counted from the input text; every
message before the last one (and the Responses API's `instructions`) is treated as a
cached prefix, so `prompt_tokens_details.cached_tokens` is filled; models named like
OpenAI's reasoning models (`o1`, `o3-mini`, `o4-mini`, `gpt-5...`) also report
`completion_tokens_details.reasoning_tokens`, included in the completion tokens.

Some model names provoke faults, for tests and demos of error handling:

- `error-500` (any `error-<status>`): the server answers with that HTTP status;
- `slow` (or `slow-<seconds>`, default 3 s): the server waits before answering, so a
  client `timeout` fires.

Any other model name is served, including names no price table knows
(`my-local-llama`): its tokens are counted and its cost is unpriced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import openai

__all__ = ["DemoServer", "async_client", "client", "count_tokens", "start"]

#: The `created` timestamp of every answer: a fixed value keeps answers reproducible.
CREATED: Final = 1_750_000_000
DEMO_API_KEY: Final = "agenta-notebook-demo"
DEFAULT_SLOW_SECONDS: Final = 3.0
_REASONING_MODEL: Final = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)", re.IGNORECASE)
_ERROR_MODEL: Final = re.compile(r"^error-(\d{3})$")
_SLOW_MODEL: Final = re.compile(r"^slow(?:-(\d+(?:\.\d+)?))?$")
_TOKEN: Final = re.compile(r"\w+|[^\w\s]")
_CACHE_BLOCK: Final = 8

_OPENINGS: Final = (
    "Here is a short answer about {topic}.",
    "Thinking about {topic}, three points stand out.",
    "In brief, {topic} comes down to a few facts.",
    "A careful look at {topic} gives a clear picture.",
)
_BODIES: Final = (
    "First, start from what is known. Second, check it against a source. "
    "Third, keep the answer short.",
    "The main idea is simple, the details matter, and the trade-offs are real.",
    "Most of the work is in the framing; the rest follows from it.",
    "It depends on the context, but the usual answer holds in most cases.",
)


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words and punctuation marks.

    >>> count_tokens("Hello, world!")
    4
    """
    return len(_TOKEN.findall(text))


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def _message_tokens(text: str) -> int:
    # Like OpenAI's chat format: a few tokens of framing per message.
    return count_tokens(text) + 4


def _prompt_usage(prefix: Sequence[str], last: str) -> tuple[int, int]:
    """(prompt tokens, cached tokens) for a prompt made of a prefix and a last message."""
    prefix_tokens = sum(_message_tokens(text) for text in prefix)
    prompt_tokens = prefix_tokens + _message_tokens(last) + 3
    cached = (prefix_tokens // _CACHE_BLOCK) * _CACHE_BLOCK
    return prompt_tokens, cached


def _reply(model: str, question: str, prompt: str) -> str:
    words = re.findall(r"[A-Za-z0-9']+", question)
    topic = " ".join(words[-6:]).lower() if words else "your question"
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).digest()
    opening = _OPENINGS[digest[0] % len(_OPENINGS)].format(topic=topic)
    return f"{opening} {_BODIES[digest[1] % len(_BODIES)]}"


def _reasoning_tokens(model: str, visible_tokens: int) -> int:
    if not _REASONING_MODEL.match(model):
        return 0
    return 64 + 2 * visible_tokens


def _limit(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut `text` to `max_tokens` tokens; (text, whether it was cut)."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return text, False
    matches = list(_TOKEN.finditer(text))
    if len(matches) <= max_tokens:
        return text, False
    return text[: matches[max_tokens - 1].end()], True


def _pieces(text: str) -> list[str]:
    """Stream deltas: two or three words each, joined back they give `text`."""
    words = re.findall(r"\S+\s*", text)
    return ["".join(words[index : index + 3]) for index in range(0, len(words), 3)] or [""]


def _ident(prefix: str, *parts: str) -> str:
    return f"{prefix}{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:24]}"


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
    text, truncated = _limit(_reply(model, last, "\n".join([*prefix, last])), max_tokens)
    visible = count_tokens(text)
    return _Answer(
        model=model,
        text=text,
        truncated=truncated,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        visible_tokens=visible,
        reasoning_tokens=_reasoning_tokens(model, visible),
    )


# -- chat completions ---------------------------------------------------------------------
def _chat_prompt(body: Mapping[str, Any]) -> tuple[list[str], str]:
    messages = body.get("messages")
    texts = [
        _text_of(message.get("content"))
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
        "prompt_tokens_details": {"cached_tokens": answer.cached_tokens, "audio_tokens": 0},
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
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
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
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            value["usage"] = None
        return value

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in _pieces(answer.text):
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
        _text_of(item.get("content"))
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
        {"type": "response.created", "response": _response(answer, ident, body, done=False)},
        {"type": "response.in_progress", "response": _response(answer, ident, body, done=False)},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**_response_message(answer, ident, "", "in_progress"), "content": []},
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
        for piece in _pieces(answer.text)
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


# -- HTTP ---------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _DemoHTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep notebooks and test output clean

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            models = [
                "gpt-4o",
                "gpt-4o-mini",
                "o3-mini",
                "text-embedding-3-small",
                "my-local-llama",
            ]
            self._json(
                HTTPStatus.OK,
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": CREATED, "owned_by": "demo"}
                        for name in models
                    ],
                },
            )
            return
        self._error(HTTPStatus.NOT_FOUND, f"no route for GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON", "invalid_request_error")
            return
        if not isinstance(body, dict):
            self._error(
                HTTPStatus.BAD_REQUEST, "the body is not an object", "invalid_request_error"
            )
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._error(HTTPStatus.BAD_REQUEST, "`model` is required", "invalid_request_error")
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        self.server.record(path, model)
        if self._fault(model):
            return
        if path in ("/v1/chat/completions", "/chat/completions"):
            self._chat(body, model)
        elif path in ("/v1/responses", "/responses"):
            self._responses(body, model)
        elif path in ("/v1/embeddings", "/embeddings"):
            self._json(HTTPStatus.OK, _embeddings(body, model))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route for POST {self.path}", "not_found")

    def _fault(self, model: str) -> bool:
        """Answer a fault-provoking model; True when the request has been handled."""
        error = _ERROR_MODEL.match(model)
        if error:
            status = int(error.group(1))
            self._error(status, f"the demo model {model!r} always fails", "server_error")
            return True
        slow = _SLOW_MODEL.match(model)
        if slow:
            seconds = float(slow.group(1)) if slow.group(1) else DEFAULT_SLOW_SECONDS
            if self.server.stopping.wait(seconds):
                self.close_connection = True
                return True
        return False

    def _chat(self, body: Mapping[str, Any], model: str) -> None:
        prefix, last = _chat_prompt(body)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        answer = _answer(model, prefix, last, limit)
        ident = _ident("chatcmpl-", model, *prefix, last)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
            self._events(
                ({"data": chunk} for chunk in _chat_chunks(answer, ident, include_usage)),
                done=True,
            )
        else:
            self._json(HTTPStatus.OK, _chat_completion(answer, ident))

    def _responses(self, body: Mapping[str, Any], model: str) -> None:
        prefix, last = _responses_prompt(body)
        answer = _answer(model, prefix, last, body.get("max_output_tokens"))
        ident = _ident("resp_", model, *prefix, last)
        if body.get("stream"):
            self._events(
                (
                    {"event": event["type"], "data": event}
                    for event in _response_events(answer, ident, body)
                ),
                done=False,
            )
        else:
            self._json(HTTPStatus.OK, _response(answer, ident, body))

    def _json(self, status: int, value: Any) -> None:
        payload = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(
            status, {"error": {"message": message, "type": kind, "param": None, "code": None}}
        )

    def _events(self, events: Iterator[Mapping[str, Any]], *, done: bool) -> None:
        """Send server-sent events; the connection closes after them."""
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in events:
                lines = ""
                if "event" in event:
                    lines += f"event: {event['event']}\n"
                lines += f"data: {json.dumps(event['data'])}\n\n"
                self.wfile.write(lines.encode())
                self.wfile.flush()
            if done:
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: a consumer that broke out of the stream


class _DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or stopped reading closes its socket: not worth a
        # traceback in the notebook. Anything else is reported as usual.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, path: str, model: str) -> None:
        with self._requests_lock:
            self.requests.append((path, model))


@dataclass
class DemoServer:
    """A running stand-in: `base_url` for an OpenAI client, `stop()` when done.

    Also a context manager: `with demo.start() as server: ...`.
    """

    base_url: str
    _httpd: _DemoHTTPServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(path, model) of every POST served so far, in order of arrival."""
        with self._httpd._requests_lock:
            return list(self._httpd.requests)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving and free the port; requests still waiting (`slow`) end at once."""
        if not self._httpd.stopping.is_set():
            self._httpd.stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start(host: str = "127.0.0.1", port: int = 0) -> DemoServer:
    """Start the stand-in on `host` (loopback) and a free port, in a daemon thread.

    >>> with start() as server:
    ...     server.base_url.startswith("http://127.0.0.1:")
    True
    """
    httpd = _DemoHTTPServer((host, port))
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="agenta-notebook-demo-server",
        daemon=True,
    )
    thread.start()
    bound_port = httpd.server_address[1]
    return DemoServer(base_url=f"http://{host}:{bound_port}/v1", _httpd=httpd, _thread=thread)


_shared: DemoServer | None = None
_shared_lock = threading.Lock()


def _shared_server() -> DemoServer:
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = start()
        return _shared


def _uses_real_provider() -> bool:
    return bool(os.environ.get("OPENAI_API_KEY"))


def client(server: DemoServer | None = None, **kwargs: Any) -> openai.OpenAI:
    """An `openai.OpenAI` client for `server` if given; otherwise for the real provider
    when `OPENAI_API_KEY` is set, else for a stand-in started on first use and shared
    by the session.

    Keyword arguments go to `openai.OpenAI` (`timeout=`, `max_retries=`, ...).
    """
    import openai

    if server is None and _uses_real_provider():
        return openai.OpenAI(**kwargs)
    target = server if server is not None else _shared_server()
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return openai.OpenAI(base_url=target.base_url, **kwargs)


def async_client(server: DemoServer | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
    """Like `client()`, for `openai.AsyncOpenAI`."""
    import openai

    if server is None and _uses_real_provider():
        return openai.AsyncOpenAI(**kwargs)
    target = server if server is not None else _shared_server()
    kwargs.setdefault("api_key", DEMO_API_KEY)
    return openai.AsyncOpenAI(base_url=target.base_url, **kwargs)
