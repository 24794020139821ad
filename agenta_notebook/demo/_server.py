"""The HTTP server of the stand-in: one port, both protocols."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from agenta_notebook.demo import _anthropic, _openai
from agenta_notebook.demo._common import DEFAULT_SLOW_SECONDS, ERROR_MODEL, SLOW_MODEL, Reply

_OPENAI_ROUTES: dict[str, Callable[[Mapping[str, Any], str], Reply]] = {
    "/chat/completions": _openai.chat,
    "/responses": _openai.responses,
    "/embeddings": _openai.embeddings,
}
_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"


def _route(path: str) -> str:
    """The path without query, trailing slash, nor the `/v1` prefix of OpenAI's routes."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.startswith("/v1/") and not path.startswith(_MESSAGES):
        return path[len("/v1") :]
    return path


class _Handler(BaseHTTPRequestHandler):
    server: _DemoHTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep notebooks and test output clean

    def do_GET(self) -> None:
        if _route(self.path) == "/models":
            self._send(_openai.models())
            return
        self._send(
            _openai.error(HTTPStatus.NOT_FOUND, f"no route for GET {self.path}", "not_found")
        )

    def do_POST(self) -> None:
        route = _route(self.path)
        anthropic = route.startswith(_MESSAGES)

        def refuse(status: int, message: str, kind: str) -> None:
            if anthropic:
                self._send(_anthropic.error(status, message))
            else:
                self._send(_openai.error(status, message, kind))

        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            refuse(HTTPStatus.BAD_REQUEST, "the body is not JSON", "invalid_request_error")
            return
        if not isinstance(body, dict):
            refuse(
                HTTPStatus.BAD_REQUEST,
                "the body is not an object",
                "invalid_request_error",
            )
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            refuse(HTTPStatus.BAD_REQUEST, "model: Field required", "invalid_request_error")
            return
        self.server.record(self.path.split("?", 1)[0].rstrip("/"), model)
        error = ERROR_MODEL.match(model)
        if error:
            refuse(
                int(error.group(1)),
                f"the demo model {model!r} always fails",
                "server_error",
            )
            return
        if self._slow(model):
            return
        if route == _COUNT_TOKENS:
            self._send(_anthropic.count(body))
        elif route == _MESSAGES:
            self._send(_anthropic.messages(body, model, self.server.prompt_cache))
        elif route in _OPENAI_ROUTES:
            self._send(_OPENAI_ROUTES[route](body, model))
        else:
            refuse(HTTPStatus.NOT_FOUND, f"no route for POST {self.path}", "not_found")

    def _slow(self, model: str) -> bool:
        """Wait for a `slow` model; True when the server stopped meanwhile (no answer)."""
        slow = SLOW_MODEL.match(model)
        if not slow:
            return False
        seconds = float(slow.group(1)) if slow.group(1) else DEFAULT_SLOW_SECONDS
        if self.server.stopping.wait(seconds):
            self.close_connection = True
            return True
        return False

    def _send(self, reply: Reply) -> None:
        if reply.events is not None:
            self._events(reply)
            return
        payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _events(self, reply: Reply) -> None:
        """Send server-sent events; the connection closes after them."""
        assert reply.events is not None
        self.close_connection = True
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            for event, data in reply.events:
                lines = f"event: {event}\n" if event is not None else ""
                lines += f"data: {json.dumps(data)}\n\n"
                self.wfile.write(lines.encode())
                self.wfile.flush()
            if reply.done:
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: a consumer that broke out of the stream


class _DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    #: The listen backlog. socketserver's default of 5 made a fan-out of 20 calls wait
    #: for the client's SYN retry (a second or more), or fail: the stand-in taught that
    #: fan-out is slow. The kernel caps it at `net.core.somaxconn`.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.requests_lock = threading.Lock()
        self.prompt_cache = _anthropic.PromptCache()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or stopped reading closes its socket: not worth a
        # traceback in the notebook. Anything else is reported as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, path: str, model: str) -> None:
        with self.requests_lock:
            self.requests.append((path, model))


@dataclass
class DemoServer:
    """A running stand-in: `base_url` for an OpenAI client, `anthropic_base_url` for an
    Anthropic client, `stop()` when done.

    Also a context manager: `with demo.start() as server: ...`.
    """

    base_url: str
    _httpd: _DemoHTTPServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def anthropic_base_url(self) -> str:
        """The root of the server: the Anthropic client adds `/v1/messages` itself."""
        return self.base_url.removesuffix("/v1")

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(path, model) of every POST served so far, in order of arrival."""
        with self._httpd.requests_lock:
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
