"""The one `SpanProcessor` that keeps the spans of the traces we opened, and its wiring.

If the process already has an SDK `TracerProvider` (the user's, or Agenta's SDK's), the
collector is added to it and the user's processors keep working. Otherwise an SDK
provider is installed as the global one, so that instrumentation libraries, which use
`opentelemetry.trace.get_tracer(...)`, are recorded too.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import Status, StatusCode

from .tree import SpanEvent, SpanRecord, Trace
from .usage import AG_TYPE

#: Attribute that marks the root span of a trace opened by this package.
ROOT_MARKER: Final = "agenta_notebook.root"
TRACER_NAME: Final = "agenta_notebook"
DEFAULT_MAX_TRACES: Final = 200
DEFAULT_MAX_SPANS: Final = 2_000_000

DropListener = Callable[[Trace], None]


def _copy_attributes(attributes: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not attributes:
        return {}
    for _ in range(5):
        try:
            return dict(attributes)
        except RuntimeError:  # changed size while a running span was being read
            continue
    return {}


_STATUS_NAMES: Final[dict[StatusCode, str]] = {code: code.name for code in StatusCode}
_KIND_NAMES: Final[dict[otel_trace.SpanKind, str]] = {
    kind: kind.name for kind in otel_trace.SpanKind
}


def _events_of(span: ReadableSpan) -> tuple[SpanEvent, ...]:
    return tuple(
        SpanEvent(event.name, event.timestamp, event.attributes or {}) for event in span.events
    )


def record_from_span(span: ReadableSpan) -> SpanRecord:
    """Convert an SDK span (ended or still running) to the core's plain record."""
    fields = getattr(span, "__dict__", None)
    if fields is not None and fields.get("_end_time") is not None:
        try:
            return _record_from_ended_fields(span, fields)
        except (KeyError, AttributeError, TypeError):  # an SDK with other internals
            pass
    return _record_from_public_api(span)


def _record_from_ended_fields(span: ReadableSpan, fields: dict[str, Any]) -> SpanRecord:
    # The fast path, for the ended spans of the SDK this package is tested with: once a
    # span has ended its fields no longer change, so they are read directly instead of
    # through a dozen properties. The SDK freezes an ended span's attributes (its
    # `BoundedAttributes` refuses writes), so their inner dict is shared, not copied;
    # `SpanRecord.attributes` is a read-only Mapping.
    attributes = fields["_attributes"]
    if attributes is None:
        plain: Mapping[str, Any] = {}
    elif getattr(attributes, "_immutable", False) and type(attributes._dict) is dict:
        plain = attributes._dict
    else:
        plain = dict(attributes)
    context = fields["_context"]
    parent = fields["_parent"]
    status = fields["_status"]
    scope = fields["_instrumentation_scope"]
    resource = fields["_resource"]
    return SpanRecord(
        context.trace_id if context else 0,
        context.span_id if context else 0,
        parent.span_id if parent is not None else None,
        fields["_name"],
        fields["_start_time"] or 0,
        fields["_end_time"],
        status.status_code._name_,  # an Enum member's name, without the property's cost
        status.description,
        plain,
        _events_of(span) if fields["_events"] else (),
        fields["_kind"]._name_,
        scope.name if scope is not None else None,
        resource.attributes if resource is not None else {},
    )


def _record_from_public_api(span: ReadableSpan) -> SpanRecord:
    context = span.context
    parent = span.parent
    status = span.status
    end_time = span.end_time
    attributes = span.attributes if end_time is not None else _copy_attributes(span.attributes)
    scope = span.instrumentation_scope
    resource = span.resource
    return SpanRecord(
        context.trace_id if context else 0,
        context.span_id if context else 0,
        parent.span_id if parent is not None else None,
        span.name,
        span.start_time or 0,
        end_time,
        _STATUS_NAMES.get(status.status_code, "UNSET"),  # type: ignore[arg-type]
        status.description,
        attributes or {},
        _events_of(span),
        _KIND_NAMES.get(span.kind, "INTERNAL"),
        scope.name if scope is not None else None,
        resource.attributes if resource is not None else {},
    )


#: Dropped traces still waiting for open spans, at most (spans that never end).
MAX_DRAINING: Final = 256


class Collector(SpanProcessor):
    """Keeps the spans of traces opened by `trace()` or the cell magic, by trace id.

    Retention is bounded: when more than `max_traces` traces, or more than `max_spans`
    spans in all, are kept, the oldest traces are dropped first.
    """

    def __init__(
        self, max_traces: int = DEFAULT_MAX_TRACES, max_spans: int = DEFAULT_MAX_SPANS
    ) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self._traces: OrderedDict[int, Trace] = OrderedDict()
        # Dropped traces that still had open spans: they get those spans when they end
        # (rollup.md rule 10, and `--save`, which waits for them), then are forgotten.
        self._draining: OrderedDict[int, Trace] = OrderedDict()
        self._lock = threading.Lock()
        self._drop_listeners: list[DropListener] = []

    # -- SpanProcessor ------------------------------------------------------------------
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        try:
            context = span.context
            trace = self._traces.get(context.trace_id)
            if trace is None:
                if span.parent is None and span.attributes and span.attributes.get(ROOT_MARKER):
                    trace = self._register(context.trace_id, span.name, context.span_id)
                else:
                    return
            trace._span_started(context.span_id, span)
        except Exception:  # never break the user's code from inside a processor
            pass

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            trace = self._traces.get(context.trace_id)
            if trace is not None:
                trace._span_ended(context.span_id, span)
                if context.span_id == trace.root_span_id:
                    # A finished block may now be dropped, and may have passed the bound.
                    self._retain()
            elif self._draining:
                trace = self._draining.get(context.trace_id)
                if trace is not None:
                    trace._span_ended(context.span_id, span)
                    if not trace.running:
                        self._draining.pop(context.trace_id, None)
        except Exception:
            pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- traces ------------------------------------------------------------------------
    def _register(self, trace_id: int, name: str, root_span_id: int) -> Trace:
        trace = Trace(trace_id, name, root_span_id=root_span_id, converter=record_from_span)
        trace.closed = False
        dropped: list[Trace] = []
        with self._lock:
            self._traces[trace_id] = trace
            dropped = self._enforce_retention()
        for old in dropped:
            self._dropped(old)
        return trace

    def _retain(self) -> None:
        with self._lock:
            dropped = self._enforce_retention()
        for old in dropped:
            self._dropped(old)

    def _enforce_retention(self) -> list[Trace]:
        """Drop the oldest traces until both bounds hold (call with the lock held).

        A trace whose root span is still open (its block is running) is never dropped,
        so the bounds may be passed for as long as blocks are nested.
        """
        dropped: list[Trace] = []

        def drop_oldest() -> Trace | None:
            for trace_id, trace in self._traces.items():
                if trace._root_ended:
                    del self._traces[trace_id]
                    dropped.append(trace)
                    return trace
            return None

        while len(self._traces) > max(self.max_traces, 1):
            if drop_oldest() is None:
                break
        if self.max_spans > 0:
            total = sum(trace.span_count for trace in self._traces.values())
            while total > self.max_spans and len(self._traces) > 1:
                old = drop_oldest()
                if old is None:
                    break
                total -= old.span_count
        return dropped

    def _dropped(self, trace: Trace) -> None:
        trace.dropped = True
        if trace.running:
            with self._lock:
                self._draining[trace.trace_id] = trace
                while len(self._draining) > MAX_DRAINING:
                    self._draining.popitem(last=False)
        for listener in tuple(self._drop_listeners):
            try:
                listener(trace)
            except Exception:
                pass

    def get(self, trace_id: int) -> Trace | None:
        return self._traces.get(trace_id)

    def traces(self) -> list[Trace]:
        """Retained traces, oldest first."""
        with self._lock:
            return list(self._traces.values())

    def set_retention(self, max_traces: int | None = None, max_spans: int | None = None) -> None:
        with self._lock:
            if max_traces is not None:
                self.max_traces = max_traces
            if max_spans is not None:
                self.max_spans = max_spans
            dropped = self._enforce_retention()
        for old in dropped:
            self._dropped(old)

    def clear(self) -> None:
        """Forget every retained trace."""
        with self._lock:
            dropped = list(self._traces.values())
            self._traces.clear()
        for old in dropped:
            self._dropped(old)

    def add_drop_listener(self, listener: DropListener) -> None:
        """Call `listener(trace)` when a trace is dropped by retention or `clear()`."""
        self._drop_listeners.append(listener)


_install_lock = threading.Lock()
_collector: Collector | None = None
_provider: TracerProvider | None = None
_tracer: otel_trace.Tracer | None = None
_last_trace: Trace | None = None


def _move_first(multi: Any, processor: SpanProcessor) -> None:
    with multi._lock:
        others = tuple(p for p in multi._span_processors if p is not processor)
        if len(others) < len(multi._span_processors):
            multi._span_processors = (processor, *others)


def keep_first(provider: TracerProvider, processor: SpanProcessor) -> bool:
    """Make `processor` the first of `provider`'s span processors, now and after later adds.

    The SDK's multi-span processors call their processors in order, with no try/except:
    a processor of the user's that raises in `on_start` or `on_end` stops the ones after
    it from seeing that span. Ours never raises, so running first keeps every trace
    whole whatever the user's processors do, and theirs still see every span. Processors
    added later (`provider.add_span_processor`) go after ours: the multi-processor's
    `add_span_processor` is wrapped on that one instance (no class is patched).

    Relies on the SDK's `_active_span_processor._span_processors` tuple and `_lock`
    (there since SDK 1.0); on a provider without them, nothing is reordered and False
    is returned (ours then runs where it was added: last).
    """
    multi: Any = getattr(provider, "_active_span_processor", None)
    if not isinstance(getattr(multi, "_span_processors", None), tuple) or not hasattr(
        getattr(multi, "_lock", None), "__enter__"
    ):
        return False
    _move_first(multi, processor)
    add = getattr(multi, "add_span_processor", None)
    if add is None or getattr(add, "_agenta_notebook_keeps", None) is processor:
        return True

    def add_span_processor(span_processor: SpanProcessor) -> None:
        add(span_processor)
        _move_first(multi, processor)

    add_span_processor._agenta_notebook_keeps = processor  # type: ignore[attr-defined]
    multi.add_span_processor = add_span_processor
    return True


def get_collector() -> Collector:
    """The process's collector, attached to the tracer provider on first use."""
    global _collector, _provider
    if _collector is not None:
        return _collector
    with _install_lock:
        if _collector is not None:
            return _collector
        provider = otel_trace.get_tracer_provider()
        existing = getattr(provider, "_agenta_notebook_collector", None)
        if isinstance(existing, Collector) and isinstance(provider, TracerProvider):
            _collector, _provider = existing, provider
            return existing
        collector = Collector()
        if not isinstance(provider, TracerProvider):
            candidate = TracerProvider()
            otel_trace.set_tracer_provider(candidate)
            if otel_trace.get_tracer_provider() is not candidate:
                warnings.warn(
                    "agenta_notebook: the global OpenTelemetry tracer provider is not the "
                    "SDK's, so only spans from agenta_notebook itself are recorded.",
                    stacklevel=2,
                )
            provider = candidate
        provider.add_span_processor(collector)
        keep_first(provider, collector)
        provider._agenta_notebook_collector = collector  # type: ignore[attr-defined]
        _collector, _provider = collector, provider
        return collector


def get_tracer() -> otel_trace.Tracer:
    """The tracer this package's spans are made with."""
    global _tracer
    if _tracer is None:
        get_collector()
        assert _provider is not None
        from . import __version__

        _tracer = _provider.get_tracer(TRACER_NAME, __version__)
    return _tracer


def set_retention(max_traces: int | None = None, max_spans: int | None = None) -> None:
    """Bound what the session keeps: at most `max_traces` traces and `max_spans` spans.

    The oldest traces are dropped first. Defaults: 200 traces, 2,000,000 spans.
    """
    get_collector().set_retention(max_traces, max_spans)


def last_trace() -> Trace | None:
    """The trace of the last traced block or cell, or `None` if there was none."""
    return _last_trace


def _set_last_trace(trace: Trace) -> None:
    global _last_trace
    _last_trace = trace


def start_root(
    name: str, attributes: Mapping[str, Any] | None = None
) -> tuple[otel_trace.Span, Trace]:
    """Start the root span of a new trace and register it; the caller must end the span."""
    collector = get_collector()
    root_attributes: dict[str, Any] = {AG_TYPE: "workflow", ROOT_MARKER: True}
    if attributes:
        root_attributes.update(attributes)
    # An empty context: a traced block always starts its own trace (rollup.md rule 9).
    root = get_tracer().start_span(name, context=otel_context.Context(), attributes=root_attributes)
    span_context = root.get_span_context()
    trace = collector.get(span_context.trace_id)
    if trace is None:  # not sampled, or a provider that is not ours: an empty trace
        trace = Trace(span_context.trace_id, name)
    return root, trace


def fail_span(span: otel_trace.Span, error: BaseException) -> None:
    """Mark `span` as failed by `error`, the way OpenTelemetry's own helpers do."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


@contextmanager
def trace(name: str = "trace", *, attributes: Mapping[str, Any] | None = None) -> Iterator[Trace]:
    """Run a block inside one root span and yield its `Trace`, complete when it exits.

    >>> from agenta_notebook import trace, span
    >>> with trace("demo") as t:
    ...     with span("step"):
    ...         pass
    >>> [node.name for node in t.nodes]
    ['demo', 'step']
    """
    root, result = start_root(name, attributes)
    token = otel_context.attach(otel_trace.set_span_in_context(root))
    try:
        yield result
    except BaseException as error:
        fail_span(root, error)
        raise
    finally:
        otel_context.detach(token)
        try:
            root.end()  # may raise: a user's span processor (the SDK does not catch)
        finally:
            result.closed = True
            _set_last_trace(result)
