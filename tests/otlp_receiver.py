"""A real OTLP/HTTP traces receiver for tests: decodes protobuf with opentelemetry-proto.

It listens on 127.0.0.1 (an ephemeral port, kept across restarts) and can be told to
answer 500, to answer after a delay, or be stopped and started again on the same port.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(value: AnyValue) -> Any:
    """A protobuf AnyValue as a Python value (arrays as tuples)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return {pair.key: any_value(pair.value) for pair in value.kvlist_value.values}
    return getattr(value, which)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    name: str
    kind: int
    start_time_ns: int
    end_time_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    scope: str
    resource: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        delay = receiver.delay
        if delay:
            time.sleep(delay)
        if receiver.status != 200:
            receiver._note_refusal()
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        receiver._accept(request, dict(self.headers.items()), self.path)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", port), _Handler)


class OtlpReceiver:
    """Start with `start()`; `url` is the traces endpoint; `spans` is what arrived."""

    def __init__(self) -> None:
        self.port = 0
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        self.refused = 0
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        server = _Server(self.port, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- data ---------------------------------------------------------------------------
    def _note_refusal(self) -> None:
        with self._lock:
            self.requests += 1
            self.refused += 1

    def _accept(
        self, request: ExportTraceServiceRequest, headers: dict[str, str], path: str
    ) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_span_id=(
                                int.from_bytes(span.parent_span_id, "big")
                                if span.parent_span_id
                                else None
                            ),
                            name=span.name,
                            kind=span.kind,
                            start_time_ns=span.start_time_unix_nano,
                            end_time_ns=span.end_time_unix_nano,
                            status_code=span.status.code,
                            status_message=span.status.message,
                            attributes={a.key: any_value(a.value) for a in span.attributes},
                            events=tuple(
                                (event.name, {a.key: any_value(a.value) for a in event.attributes})
                                for event in span.events
                            ),
                            scope=scope_spans.scope.name,
                            resource=resource,
                        )
                    )
        with self._arrived:
            self.requests += 1
            self.paths.append(path)
            self.headers.append({key.lower(): value for key, value in headers.items()})
            self.spans.extend(spans)
            self._arrived.notify_all()

    def spans_of(self, trace_id: int) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: int, count: int, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Wait until `count` spans of `trace_id` arrived (or `timeout`); return them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [span for span in self.spans if span.trace_id == trace_id]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    return found
                self._arrived.wait(remaining)
