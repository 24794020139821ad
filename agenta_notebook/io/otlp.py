"""Send the spans of traced blocks and cells to an OpenTelemetry backend over OTLP.

`export_to(endpoint)` (or the standard `OTEL_EXPORTER_OTLP_*` environment variables,
read when the extension loads: `maybe_export_on_load`) adds one span processor to the
tracer provider. It passes on only the spans of traces our collector keeps (by trace
id), to the official OTLP HTTP/protobuf exporter behind a `BatchSpanProcessor`:

- The traced code never waits on the network: a span's end only appends it to the
  batch processor's queue; the exporter sends from its own thread. `force_flush` on the
  provider does not wait on us either; call `OtlpExport.flush()` to wait for delivery.
- Spans keep every attribute they have, and speak the receiver's vocabulary too: next
  to Agenta's keys (`ag.type.node`, `ag.metrics.unit.tokens.*`, ...), which an Agenta
  backend rolls up, each span gets the OpenTelemetry GenAI conventions' and
  OpenInference's keys for its kind, model and the usage counted at it
  (`agenta_notebook.core.vocabulary`), so Phoenix, Langfuse or any GenAI-aware backend shows
  our own model calls as model calls, and a sum over its spans gives our totals. The
  keys are added on the exporter's thread, never on the traced code's path, never over
  a key the span has. What is counted where is known once the tree is finished, so the
  spans of a block still running wait for its root span (at most `HOLD_SECONDS`, or
  until `flush()`), then go out with the keys of the tree as it is then.
- An endpoint that is down, slow or failing never fails the traced code and never
  touches the in-notebook trace. The exporter's own per-batch log lines are silenced
  (a logging filter on its loggers, for our exporter's thread only) and one
  `OtlpExportWarning` per outage says what failed; batches that fail are dropped, and
  export resumes by itself with the next batch the endpoint accepts.

Environment variables read: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or
`OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, `/v1/traces` is appended),
`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`,
`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` (only `http/protobuf` is supported),
`OTEL_TRACES_EXPORTER` (export only if unset or it lists `otlp`), `OTEL_SDK_DISABLED`
and the `OTEL_BSP_*` batch settings.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agenta_notebook import forksafe
from agenta_notebook.collector import Collector, record_from_span
from agenta_notebook.core.rollup import TraceTree, build_tree
from agenta_notebook.core.vocabulary import receiver_attributes
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import RUNTIME, attach_everywhere, get_collector

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

DEFAULT_ENDPOINT: Final = "http://localhost:4318/v1/traces"
TRACES_PATH: Final = "/v1/traces"
SUPPORTED_PROTOCOL: Final = "http/protobuf"
#: The batch queue's size unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise: a notebook
#: cell can end thousands of spans in a burst, more than the SDK's default of 2048.
DEFAULT_MAX_QUEUE_SIZE: Final = 20_000
#: How long a shutdown (kernel exit, a new `export_to`) may wait for the last batches.
SHUTDOWN_WAIT_SECONDS: Final = 2.0
#: Spans of a trace whose root span is still open are held (to be sent with the
#: receivers' keys of the finished tree) for at most this long, and at most this many.
HOLD_SECONDS: Final = 10.0
MAX_HELD_SPANS: Final = DEFAULT_MAX_QUEUE_SIZE
#: A running trace whose tree took t seconds to build holds its next spans for at least
#: this many times t, so that rebuilding a huge tree stays a small part of the work.
HOLD_PER_BUILD_SECOND: Final = 20.0

#: Loggers of the exporter, its HTTP transport and the batch processor: their records
#: are dropped while our exporter's thread (or our `on_end`) is the one logging.
_QUIET_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.common._exporter_metrics",
    "opentelemetry.exporter.http.transport._requests",
    "opentelemetry.exporter.http.transport._urllib3",
    "opentelemetry.exporter.http.transport._base",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "urllib3.connectionpool",
    "urllib3.util.retry",
)

_logger = logging.getLogger(__name__)


class OtlpExportWarning(UserWarning):
    """Exporting spans over OTLP failed; shown once per outage."""


class _QuietZone(threading.local):
    """Per thread: are we inside our exporter, and what did the silenced loggers say."""

    active: bool = False
    dropped: int = 0
    first_message: str | None = None
    last_message: str | None = None

    def reason(self) -> str | None:
        first, last = self.first_message, self.last_message
        transient = _TRANSIENT.match(first or "")
        if transient is not None:  # the cause, not "retrying in 1.02s" then "gave up"
            return _shorten(f"{transient.group(1)}, still failing after retries")
        return _shorten(last)


#: The exporter's log line for an error it retries: the cause is the interesting part.
_TRANSIENT: Final = re.compile(r"Transient error (.*) encountered while exporting", re.DOTALL)


def _shorten(text: str | None, limit: int = 300) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


# Process-wide by nature, so not the runtime's: the logging filter sits on the exporter's
# named loggers (one per process), and what it reads is per thread.
_quiet = _QuietZone()


class _SilenceOurExport(logging.Filter):
    """Drops the exporter's log records emitted on behalf of our export, keeps the last."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _quiet.active:
            return True
        if isinstance(record.msg, str) and record.msg.startswith("Queue full"):
            _quiet.dropped += 1
        if record.levelno >= logging.WARNING:
            try:
                message = record.getMessage()
            except (TypeError, ValueError, KeyError):  # its arguments do not fit its format
                message = str(record.msg)
            if _quiet.first_message is None:
                _quiet.first_message = message
            _quiet.last_message = message
        return False


_FILTER: Final = _SilenceOurExport()


def _install_log_filter() -> None:
    """Put our filter first on each of the exporter's loggers (once: it stays)."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        # First in line: the SDK's own DuplicateFilter would otherwise hide repeats
        # ("Queue full") that we count.
        if _FILTER not in logger.filters:
            logger.filters.insert(0, _FILTER)


class _Held:
    """The spans of one running trace that wait for its root span, and until when."""

    __slots__ = ("spans", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.spans: list[ReadableSpan] = []


class _WatchedExporter(SpanExporter):
    """Wraps the OTLP exporter: counts, never raises, one warning per outage."""

    def __init__(
        self, inner: SpanExporter, endpoint: str, collector: Collector | None = None
    ) -> None:
        self._inner = inner
        self.endpoint = endpoint
        self._collector = collector
        #: spans sent with the receivers' keys added (see `agenta_notebook.core.vocabulary`)
        self.spans_translated = 0
        #: spans sent with a value OTLP cannot encode replaced by its text (`_encodable`)
        self.values_replaced = 0
        self._replacement_reported = False
        self._held: dict[int, _Held] = {}
        self._held_count = 0
        self._held_lock = forksafe.new_lock()
        #: seconds the last tree of each running trace took to build (see `_tree_of`)
        self._build_seconds: dict[int, float] = {}
        #: the batch queue's size, and how many spans went into it and came out
        self.max_queue_size = DEFAULT_MAX_QUEUE_SIZE
        self._emitted = 0
        self._arrived = 0
        self._emit_lock = forksafe.new_lock()
        self._lock = forksafe.new_lock()
        self.spans_sent = 0
        self.spans_failed = 0
        self.spans_dropped = 0
        self._drops_reported = False
        self._unreported_drops = 0
        self.batches_failed = 0
        self.outages = 0
        self.failing = False
        self.last_error: str | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._arrived += len(spans)  # out of the batch queue (one caller at a time)
        ready = self._hold_or_release(spans)
        if not ready:
            return SpanExportResult.SUCCESS
        return self._send(ready)

    def _send(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        outer = _quiet.active
        _quiet.active = True
        _quiet.first_message = _quiet.last_message = None
        try:
            result = self._inner.export(self._encodable(self._in_receiver_vocabulary(spans)))
            reason = _quiet.reason()
        except Exception as error:  # the exporter's failure is an outage: one warning
            _logger.debug("agenta_notebook: the OTLP exporter raised", exc_info=True)
            result, reason = SpanExportResult.FAILURE, f"{type(error).__name__}: {error}"
        finally:
            _quiet.active = outer
        if result is SpanExportResult.SUCCESS:
            self._succeeded(len(spans))
        else:
            self._failed(len(spans), reason or "the exporter reported a failure")
        return result

    def _hold_or_release(self, spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
        """The spans to send now: spans of a trace whose root span is still open wait.

        What the receivers' keys say about usage depends on the finished tree (a span
        whose children report usage is a claim; a call recorded twice is known when its
        twin has ended), and building a growing tree for every batch would cost the
        traced code CPU. So a running trace's spans are held until its root span ends,
        or for at most `HOLD_SECONDS` (a long cell's spans still reach the backend while
        it runs), or until `flush()`; then they go out with the tree as it is, built once.
        """
        collector = self._collector
        if collector is None:
            return list(spans)
        now = time.monotonic()
        ready: list[ReadableSpan] = []
        with self._held_lock:
            held = self._held
            for span in spans:
                context = span.context
                trace_id = context.trace_id if context is not None else None
                if trace_id is not None:
                    trace = collector.get(trace_id)
                    if trace is not None and not trace.root_ended:
                        waiting = held.get(trace_id)
                        if waiting is None:
                            hold = HOLD_SECONDS
                            built = self._build_seconds.get(trace_id)
                            if built is not None:
                                hold = max(hold, HOLD_PER_BUILD_SECOND * built)
                            held[trace_id] = waiting = _Held(now + hold)
                        waiting.spans.append(span)
                        self._held_count += 1
                        continue
                ready.append(span)
            if held:
                for trace_id in list(held):
                    waiting = held[trace_id]
                    trace = collector.get(trace_id)
                    done = trace is None or trace.root_ended
                    if done or now >= waiting.until or self._held_count > MAX_HELD_SPANS:
                        del held[trace_id]
                        self._held_count -= len(waiting.spans)
                        ready.extend(waiting.spans)
                    if done:
                        self._build_seconds.pop(trace_id, None)
        return ready

    def release_held(self) -> SpanExportResult:
        """Send every held span now (`flush`, shutdown)."""
        with self._held_lock:
            spans = [span for waiting in self._held.values() for span in waiting.spans]
            self._held.clear()
            self._held_count = 0
            self._build_seconds.clear()
        if not spans:
            return SpanExportResult.SUCCESS
        return self._send(spans)

    @property
    def spans_held(self) -> int:
        """Spans of running traces waiting for their root span (or `HOLD_SECONDS`)."""
        return self._held_count

    def _in_receiver_vocabulary(self, spans: Sequence[ReadableSpan]) -> Sequence[ReadableSpan]:
        """`spans`, each with the receivers' keys its trace's tree gives it added.

        Runs on the exporter's thread. The tree is the trace's own (built once per
        version, shared with the notebook's views); for a trace the collector no longer
        keeps, the tree of this batch's spans of it. Should anything fail, the spans go
        out as they are: the export never loses a span over its vocabulary.
        """
        if self._collector is None:
            return spans
        try:
            groups: dict[int, list[int]] = {}
            for index, span in enumerate(spans):
                context = span.context
                if context is not None:
                    groups.setdefault(context.trace_id, []).append(index)
            out = list(spans)
            translated = 0
            for trace_id, indexes in groups.items():
                tree = self._tree_of(trace_id, [spans[index] for index in indexes])
                for index in indexes:
                    span = spans[index]
                    context = span.context
                    node = tree.by_id.get(context.span_id) if context is not None else None
                    if node is None:
                        continue
                    extra = receiver_attributes(node)
                    if extra:
                        out[index] = _ExportedSpan(span, extra)
                        translated += 1
            self.spans_translated += translated
            return out
        except Exception:  # the spans still go out, as they are
            internal_error("adding the receivers' keys to exported spans")
            return spans

    def _encodable(self, spans: Sequence[ReadableSpan]) -> Sequence[ReadableSpan]:
        """`spans`, with every value OTLP cannot encode (an int past 64 bits) replaced by
        its text: the exporter would log a traceback and drop the key. One warning."""
        out: list[ReadableSpan] | None = None
        for index, span in enumerate(spans):
            replaced = _unencodable(span.attributes)
            events = span.events
            event_values = [_unencodable(event.attributes) for event in events]
            if not replaced and not any(event_values):
                continue
            if out is None:
                out = list(spans)
            if any(event_values):
                events = tuple(
                    Event(event.name, {**(event.attributes or {}), **fixed}, event.timestamp)
                    if fixed
                    else event
                    for event, fixed in zip(events, event_values, strict=True)
                )
            out[index] = _ExportedSpan(span, replaced, events)
            self.values_replaced += 1
            if not self._replacement_reported:
                self._replacement_reported = True
                key = next(iter(replaced or next(fixed for fixed in event_values if fixed)))
                _warn(
                    f"agenta_notebook: span {_shorten(span.name, 80)!r} has a value of "
                    f"{_shorten(key, 80)!r} that OTLP cannot encode (an integer past 64 bits):"
                    " exported as text. Traces in the notebook are not affected; this is "
                    "the only warning of its kind."
                )
        return spans if out is None else out

    def _tree_of(self, trace_id: int, spans: Sequence[ReadableSpan]) -> TraceTree:
        collector = self._collector
        if collector is None:
            return build_tree(record_from_span(span) for span in spans)
        trace = collector.find(trace_id)
        if trace is not None:
            started = time.monotonic()
            tree = trace.tree
            if not trace.root_ended:
                self._build_seconds[trace_id] = time.monotonic() - started
            if all(
                span.context is not None and span.context.span_id in tree.by_id for span in spans
            ):
                return tree
        return build_tree(
            (record_from_span(span) for span in spans), user_prices=collector.user_prices()
        )

    def note_dropped(self, count: int) -> None:
        with self._lock:
            self.spans_dropped += count
            if not self.failing:  # in an outage, a full queue is part of the outage
                self._unreported_drops += count

    def _succeeded(self, count: int) -> None:
        with self._lock:
            self.spans_sent += count
            recovered = self.failing
            self.failing = False
            # Reported once, and only while the endpoint works: in an outage a full
            # queue is part of the outage, which has its own warning.
            report_drops = self._unreported_drops > 0 and not self._drops_reported
            self._drops_reported = self._drops_reported or report_drops
        if recovered:
            _logger.info("agenta_notebook: OTLP export to %s works again", self.endpoint)
        if report_drops:
            _warn(
                f"agenta_notebook: spans ended faster than they could be sent to "
                f"{self.endpoint}; {self.spans_dropped} spans were left out of the export "
                "(traces in the notebook are not affected). Raise OTEL_BSP_MAX_QUEUE_SIZE "
                "or pass export_to(max_queue_size=...). This is the only such warning."
            )

    def _failed(self, count: int, reason: str) -> None:
        with self._lock:
            self.spans_failed += count
            self.batches_failed += 1
            self.last_error = reason
            first = not self.failing
            self.failing = True
            if first:
                self.outages += 1
        if first:
            _warn(
                f"agenta_notebook: exporting spans over OTLP to {self.endpoint} failed "
                f"({reason}). Traces in the notebook are not affected. Spans are not "
                "exported until the endpoint answers again, then export resumes by itself; "
                "this is the only warning until then."
            )

    def shutdown(self) -> None:
        if not self.failing:  # the last held spans, unless the endpoint is down
            self.release_held()
        outer = _quiet.active
        _quiet.active = True
        try:
            self._inner.shutdown()
        except Exception:  # at exit or on a new export: carry on
            internal_error("shutting the OTLP exporter down")
        finally:
            _quiet.active = outer

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _ExportedSpan(ReadableSpan):
    """A finished span as exported: the same span, with the receivers' keys added.

    A light copy made on the exporter's thread; the span itself is never changed.
    """

    def __init__(
        self,
        span: ReadableSpan,
        extra: Mapping[str, Any],
        events: Sequence[Event] | None = None,
    ) -> None:
        super().__init__(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes={**(span.attributes or {}), **extra},
            events=span.events if events is None else events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        self._dropped = (span.dropped_attributes, span.dropped_events, span.dropped_links)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]


#: OTLP's integers are signed 64-bit.
_INT64: Final = range(-(2**63), 2**63)


def _unencodable(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes OTLP cannot encode (ints past 64 bits, alone or in a sequence),
    each as the text to send instead; `{}` when there are none (the usual case)."""
    if not attributes:
        return {}
    replaced: dict[str, Any] = {}
    for key, value in attributes.items():
        if type(value) is int:
            if value not in _INT64:
                replaced[key] = _int_text(value)
        elif isinstance(value, tuple | list) and any(
            type(item) is int and item not in _INT64 for item in value
        ):
            replaced[key] = tuple(
                _int_text(item) if type(item) is int and item not in _INT64 else str(item)
                for item in value
            )  # an OTLP array holds one type: all as text
    return replaced


def _int_text(value: int) -> str:
    """An integer as text, bounded (Python cannot print one past 4,300 digits)."""
    if value.bit_length() > 1000:
        return f"(an integer of {value.bit_length()} bits)"
    return str(value)


def _warn(message: str) -> None:
    # Raised from the exporter's thread, so no user line to point at; a fresh registry
    # each time, so that the same text in a later outage is shown again.
    warnings.warn_explicit(
        OtlpExportWarning(message),
        OtlpExportWarning,
        "<agenta_notebook OTLP export>",
        0,
        module=__name__,
        registry=None,
    )


class OtlpExport:
    """One running export: where spans go, what was sent, and how to stop it."""

    def __init__(self, exporter: _WatchedExporter, processor: BatchSpanProcessor) -> None:
        self._exporter = exporter
        self._processor = processor
        self.stopped = False

    @property
    def endpoint(self) -> str:
        return self._exporter.endpoint

    @property
    def spans_sent(self) -> int:
        """Spans the endpoint accepted."""
        return self._exporter.spans_sent

    @property
    def spans_failed(self) -> int:
        """Spans of batches the endpoint refused or never answered (not retried later)."""
        return self._exporter.spans_failed

    @property
    def spans_dropped(self) -> int:
        """Spans left out because the export queue was full."""
        return self._exporter.spans_dropped

    @property
    def spans_held(self) -> int:
        """Spans of traced blocks still running, waiting for the block to end (at most
        `HOLD_SECONDS`) to be sent with what the finished tree counts at each."""
        return self._exporter.spans_held

    @property
    def spans_translated(self) -> int:
        """Spans handed to the exporter with receivers' keys added (kind, model, usage)."""
        return self._exporter.spans_translated

    @property
    def values_replaced(self) -> int:
        """Spans sent with a value OTLP cannot encode (an int past 64 bits) as text."""
        return self._exporter.values_replaced

    @property
    def failing(self) -> bool:
        """True from a failed batch until a batch gets through again."""
        return self._exporter.failing

    @property
    def outages(self) -> int:
        """How many times export started failing (one warning each)."""
        return self._exporter.outages

    @property
    def last_error(self) -> str | None:
        return self._exporter.last_error

    def _emit(self, span: ReadableSpan) -> None:
        self._processor.on_end(span)

    def flush(self) -> bool:
        """Send every queued span now, waiting for the endpoint (or its timeout).

        Returns False once the export is stopped. Never call it from code that must
        not wait on the network; the traced code itself never does.
        """
        if self.stopped:
            return False
        flushed = self._processor.force_flush()
        # Spans of a trace still running were held for its root span: send them too.
        self._exporter.release_held()
        return flushed

    def stop(self, wait: float = SHUTDOWN_WAIT_SECONDS) -> None:
        """Stop exporting; queued spans get up to `wait` seconds to be sent."""
        if self.stopped:
            return
        self.stopped = True
        if self.failing:  # no point waiting on an endpoint that is down: abort retries
            self._exporter.shutdown()
        worker = threading.Thread(
            target=self._processor.shutdown, name="agenta_notebook OTLP shutdown", daemon=True
        )
        worker.start()
        worker.join(wait)
        if worker.is_alive():  # a hung endpoint: abort the exporter's retries
            self._exporter.shutdown()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else ("failing" if self.failing else "ok")
        return (
            f"<OtlpExport {self.endpoint} {state} sent={self.spans_sent} "
            f"failed={self.spans_failed}>"
        )


class _ExportProcessor(SpanProcessor):
    """Registered once on the provider: hands spans of our traces to the current export."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self.export: OtlpExport | None = None

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        export = self.export
        if export is None:
            return
        context = span.context
        if context is None or self._collector.get(context.trace_id) is None:
            return
        exporter = export._exporter
        outer = _quiet.active
        _quiet.active = True  # "queue full" is counted, and reported once by the exporter
        _quiet.dropped = 0
        refused = False
        try:
            # A full queue is decided here, under one lock, rather than by the batch
            # processor: its own check races with its worker (it may report a span
            # dropped that was not), and the count must be exact.
            with exporter._emit_lock:
                if exporter._emitted - exporter._arrived >= exporter.max_queue_size:
                    refused = True
                else:
                    exporter._emitted += 1
                    export._emit(span)
        except Exception:  # never break the user's code from inside a processor
            internal_error("the OTLP export's on_end")
        finally:
            _quiet.active = outer
        if refused or _quiet.dropped:
            exporter.note_dropped(_quiet.dropped + (1 if refused else 0))

    def shutdown(self) -> None:
        export, self.export = self.export, None
        if export is not None:
            export.stop()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Flushing the provider (a cell's end, say) must never wait on the network.
        return True

    def __repr__(self) -> str:
        return repr(self.export) if self.export is not None else "<OTLP export stopped>"


def _route() -> _ExportProcessor | None:
    """The runtime's export route (`RUNTIME.exports`), made by the first `export_to`."""
    processor = RUNTIME.exports.processor
    return processor if isinstance(processor, _ExportProcessor) else None


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The traces URL: `endpoint`, else the OTLP environment variables, else the default.

    A URL with no path gets `/v1/traces`, the OTLP/HTTP traces path.

    >>> resolve_endpoint("http://collector:4318")
    'http://collector:4318/v1/traces'
    """
    if endpoint is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or None
        if endpoint is None:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            return f"{base.rstrip('/')}{TRACES_PATH}" if base else DEFAULT_ENDPOINT
    if urlsplit(endpoint).path in ("", "/"):
        return f"{endpoint.rstrip('/')}{TRACES_PATH}"
    return endpoint


def _protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or SUPPORTED_PROTOCOL
    ).lower()


def export_to(
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
    schedule_delay_millis: float | None = None,
    max_export_batch_size: int | None = None,
    max_queue_size: int | None = None,
) -> OtlpExport:
    """Also send the spans of traced blocks and cells to an OTLP/HTTP endpoint.

    `endpoint` is the traces URL (`http://host:4318/v1/traces`; a bare `http://host:4318`
    gets `/v1/traces`); without it the `OTEL_EXPORTER_OTLP_*` variables decide. `headers`
    add to `OTEL_EXPORTER_OTLP_HEADERS` (an Agenta backend wants
    `{"Authorization": "ApiKey ..."}`). `timeout` is the exporter's per-request timeout
    in seconds; the other settings are the batch processor's (the queue holds 20,000
    spans unless `OTEL_BSP_MAX_QUEUE_SIZE` or `max_queue_size` says otherwise). Calling
    it again replaces the previous export. Needs the `otlp` extra
    (`pip install agenta-notebook[otlp]`).

    >>> export = export_to("http://127.0.0.1:4318")      # doctest: +SKIP
    >>> export.spans_sent, export.failing                # doctest: +SKIP
    (0, False)
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise ImportError(
            "OTLP export needs the OTLP HTTP exporter: pip install 'agenta-notebook[otlp]'"
        ) from error

    _check_export_settings(endpoint, headers, timeout, schedule_delay_millis)
    for name, size in (
        ("max_export_batch_size", max_export_batch_size),
        ("max_queue_size", max_queue_size),
    ):
        _check_positive(name, size, integer=True)
    if (
        max_export_batch_size is not None
        and max_queue_size is not None
        and max_export_batch_size > max_queue_size
    ):
        raise ValueError("max_export_batch_size must not exceed max_queue_size")
    url = resolve_endpoint(endpoint)
    _install_log_filter()
    inner = OTLPSpanExporter(endpoint=url, headers=dict(headers or {}), timeout=timeout)
    watched = _WatchedExporter(inner, url, get_collector())
    if max_queue_size is None:
        max_queue_size = _queue_size_from_environment()
    watched.max_queue_size = max_queue_size
    batch = BatchSpanProcessor(
        watched,
        max_queue_size=max_queue_size,
        schedule_delay_millis=schedule_delay_millis,
        max_export_batch_size=max_export_batch_size,
    )
    export = OtlpExport(watched, batch)
    exports = RUNTIME.exports
    with exports.lock:
        route = _route()
        if route is None:
            route = _ExportProcessor(get_collector())
            exports.processor = route
            # On every SDK provider: spans of our traces may come from any of them.
            attach_everywhere(route)
        previous, route.export = route.export, export
    if previous is not None:
        threading.Thread(
            target=previous.stop, name="agenta_notebook OTLP stop", daemon=True
        ).start()
    return export


def _check_export_settings(
    endpoint: object, headers: object, timeout: object, schedule_delay_millis: object
) -> None:
    """Refuse bad `export_to` arguments before anything is made or stored."""
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str or None, not {type(endpoint).__name__}")
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("headers must map str to str")
    _check_positive("timeout", timeout, integer=False)
    _check_positive("schedule_delay_millis", schedule_delay_millis, integer=False)


def _check_positive(name: str, value: object, *, integer: bool) -> None:
    """Raise unless `value` is None or a positive finite number (an int if `integer`)."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        wanted = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {wanted} or None, not {type(value).__name__}")
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, not {value!r}")


def _queue_size_from_environment() -> int:
    """`OTEL_BSP_MAX_QUEUE_SIZE` when it is a positive integer, else our default."""
    try:
        size = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip())
    except ValueError:
        return DEFAULT_MAX_QUEUE_SIZE
    return size if size > 0 else DEFAULT_MAX_QUEUE_SIZE


def current_export() -> OtlpExport | None:
    """The running export, if any."""
    route = _route()
    return route.export if route is not None else None


def stop_export(wait: float = SHUTDOWN_WAIT_SECONDS) -> None:
    """Stop sending spans over OTLP (queued spans get up to `wait` seconds)."""
    exports = RUNTIME.exports
    with exports.lock:
        route = _route()
        if route is None:
            return
        export, route.export = route.export, None
    if export is not None:
        export.stop(wait)


def maybe_export_on_load() -> OtlpExport | None:
    """Start exporting if the environment asks for it; called when the extension loads.

    Exports when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    is set, unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER` names exporters
    without `otlp`. Never raises: a setting it cannot honour gives one warning.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters and "otlp" not in {name.strip() for name in exporters.split(",")}:
        return None
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    ):
        return None
    protocol = _protocol()
    if protocol != SUPPORTED_PROTOCOL:
        warnings.warn(
            f"agenta_notebook: OTLP protocol {protocol!r} is not supported, only "
            f"{SUPPORTED_PROTOCOL!r}; spans are not exported.",
            OtlpExportWarning,
            stacklevel=2,
        )
        return None
    try:
        return export_to()
    except (ImportError, ValueError) as error:  # the extra is missing, a bad setting
        warnings.warn(
            f"agenta_notebook: could not start OTLP export: {error}",
            OtlpExportWarning,
            stacklevel=2,
        )
        return None
    except Exception:  # the extension loads all the same
        internal_error("starting the OTLP export when the extension loaded")
        return None
