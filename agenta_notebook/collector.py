"""The one `SpanProcessor` that keeps the spans of the traces we opened, and its wiring.

The collector is added to every OpenTelemetry SDK `TracerProvider` of the process, the
ones that exist when it is installed and every one made later (the user's, Agenta's
`ag.init()`, Logfire's, an SDK's private one), so no span of a traced cell is lost
whoever made its provider; what those providers export is unchanged. When no provider is
global yet, a provider of ours is installed as the global one, so that instrumentation
libraries, which use `opentelemetry.trace.get_tracer(...)`, are recorded too; it gives
way to a provider set later (see `_FollowingTracerProvider`).
"""

from __future__ import annotations

import functools
import gc
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import Status, StatusCode

try:  # OpenTelemetry's context manager that also decorates async functions
    from opentelemetry.util._decorator import _agnosticcontextmanager
except ImportError:  # pragma: no cover - a future API without it
    from contextlib import contextmanager as _agnosticcontextmanager  # type: ignore[assignment]

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


_install_lock = threading.RLock()
_collector: Collector | None = None
_provider: TracerProvider | None = None
_tracer: otel_trace.Tracer | None = None
_last_trace: Trace | None = None

#: Processors added to every SDK tracer provider of the process, the collector first.
_everywhere: list[SpanProcessor] = []
#: The SDK providers they were added to (weakly: a provider may be thrown away).
_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()
#: On a provider: the list of our processors added to it, or `None` once `detach`ed.
_ATTACHED: Final = "_agenta_notebook_attached"
#: On the SDK's `TracerProvider` class: the function its wrapped `__init__` calls.
_ON_NEW_PROVIDER: Final = "_agenta_notebook_on_new_provider"


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


# -- every SDK provider of the process -------------------------------------------------------
#
# Spans are collected by trace id, whichever provider made them: a traced cell's root may
# come from one provider and its children from others (Agenta's `ag.init()` provider, an
# SDK's private one, Logfire's, MLflow's). So the collector is added to every SDK
# `TracerProvider` there is: the ones that exist when it is installed (one scan of the
# garbage collector's objects) and every one made later (the SDK class's `__init__` is
# wrapped once). Adding a span processor changes nothing of what a provider exports.


class _Shared(SpanProcessor):
    """A processor shared by every provider, as added to one of them.

    Shutting a provider down shuts its processors down: a library tearing down a provider
    of its own must not stop what every provider shares (the OTLP export, say). Only our
    own provider's shutdown (at exit) reaches the shared processor.
    """

    def __init__(self, processor: SpanProcessor, provider: TracerProvider) -> None:
        self.processor = processor
        self._provider = weakref.ref(provider)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        on_ending = getattr(self.processor, "_on_ending", None)
        if on_ending is not None:
            on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.processor.on_end(span)

    def shutdown(self) -> None:
        if self._provider() is _provider:
            self.processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)


def _attach(provider: TracerProvider) -> None:
    """Add our processors (`_everywhere`) to `provider`, the collector first. Never raises."""
    try:
        with _install_lock:
            if not _everywhere:
                return
            # (processor, what was added for it): the collector itself, others wrapped.
            attached: list[tuple[SpanProcessor, SpanProcessor]] | None
            attached = provider.__dict__.get(_ATTACHED, [])
            if attached is None:  # `detach`ed: left alone for good
                return
            collector = _everywhere[0]
            for processor in _everywhere:
                if not any(known is processor for known, _ in attached):
                    added = processor if processor is collector else _Shared(processor, provider)
                    provider.add_span_processor(added)
                    attached.append((processor, added))
            provider.__dict__[_ATTACHED] = attached
            keep_first(provider, collector)
            provider.__dict__["_agenta_notebook_collector"] = collector
            _providers.add(provider)
    except Exception:  # a provider of an odd kind: never break the code that made it
        pass


def _hook_new_providers() -> None:
    """Wrap `TracerProvider.__init__` (once per process) so each new provider is attached.

    The wrapper looks its callback up on the class at each call, so a reloaded copy of
    this module takes over instead of wrapping a second time.
    """
    cls = TracerProvider
    setattr(cls, _ON_NEW_PROVIDER, _attach)
    if getattr(cls.__init__, "_agenta_notebook_hook", False):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: TracerProvider, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        callback = getattr(TracerProvider, _ON_NEW_PROVIDER, None)
        if callback is not None:
            callback(self)

    __init__._agenta_notebook_hook = True  # type: ignore[attr-defined]
    setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning a method


def _existing_providers() -> list[TracerProvider]:
    """Every SDK provider alive now. By exact type, never `isinstance`: that reads an
    object's `__class__`, which a lazy proxy (openai's, say) answers by importing."""
    objects = gc.get_objects()
    kinds: dict[type, bool] = {}
    found: list[TracerProvider] = []
    for obj in objects:
        kind = type(obj)
        is_provider = kinds.get(kind)
        if is_provider is None:
            is_provider = kinds[kind] = issubclass(kind, TracerProvider)
        if is_provider:
            found.append(obj)
    return found


def attach_everywhere(processor: SpanProcessor) -> None:
    """Add `processor` to every SDK tracer provider of the process, now and to come.

    What the collector gets, for a processor that must see the spans of our traces
    whichever provider made them (the OTLP export, say). Added once per provider.
    """
    get_collector()
    with _install_lock:
        if not any(known is processor for known in _everywhere):
            _everywhere.append(processor)
        providers = list(_providers)
    for provider in providers:
        _attach(provider)


def detach(provider: TracerProvider) -> None:
    """Take our processors off `provider` and leave it alone from now on.

    For a provider that must stay bare (a benchmark's baseline): it no longer feeds the
    collector, so spans made with it are not part of any trace.
    """
    with _install_lock:
        added = [processor for _, processor in provider.__dict__.get(_ATTACHED) or []]
        provider.__dict__[_ATTACHED] = None
        _providers.discard(provider)
        multi: Any = getattr(provider, "_active_span_processor", None)
        lock = getattr(multi, "_lock", None)
        if multi is None or lock is None or not added:
            return
        with lock:
            multi._span_processors = tuple(
                p for p in multi._span_processors if not any(p is a for a in added)
            )


def attached_providers() -> list[TracerProvider]:
    """The SDK tracer providers the collector is attached to (alive ones)."""
    with _install_lock:
        return list(_providers)


# -- our own provider, which follows the global one ----------------------------------------
#
# When nobody has set a global provider yet, instrumentation libraries (which take their
# tracers from the global proxy) would record nothing, so one must be set. But the API's
# `set_tracer_provider` works once per process: taking the global for good would make a
# later `ag.init()` or `logfire.configure()` fail ("Overriding of current TracerProvider is
# not allowed") and lose its spans to our provider. So the provider we set is a following
# one: its tracers start each span on whatever provider is global at that moment if it is
# a real one set by someone else, else on itself; and after setting it, the API's set-once
# guard is re-armed so that the next `set_tracer_provider` succeeds, quietly. A later
# library then behaves as if we were not there: its provider is global, its exporter gets
# the spans of every instrumentation, and ours (with the collector on every SDK provider)
# still sees them.


def _records_for_us(provider: otel_trace.TracerProvider) -> bool:
    """True if spans started through `provider` reach an SDK provider (and so the collector)."""
    if isinstance(provider, TracerProvider):
        return True
    if isinstance(provider, otel_trace.NoOpTracerProvider | otel_trace.ProxyTracerProvider):
        return False
    try:  # a wrapper around an SDK provider (Logfire's, say)
        return any(issubclass(type(value), TracerProvider) for value in vars(provider).values())
    except TypeError:
        return False


def _global_provider() -> otel_trace.TracerProvider | None:
    """The provider set with `set_tracer_provider`, or None (no proxy, no loading)."""
    provider: otel_trace.TracerProvider | None = getattr(otel_trace, "_TRACER_PROVIDER", None)
    return provider


class _FollowingTracer(otel_trace.Tracer):
    """Starts each span on the real global provider of the moment, else on our own."""

    def __init__(
        self,
        home: TracerProvider,
        own: otel_trace.Tracer,
        scope: tuple[str, str | None, str | None, Any],
    ) -> None:
        self._home = home
        self._own = own
        self._scope = scope
        self._delegate: tuple[otel_trace.TracerProvider, otel_trace.Tracer | None] | None = None

    def _target(self) -> otel_trace.Tracer:
        current = _global_provider()
        if current is None or current is self._home:
            return self._own
        cached = self._delegate
        if cached is None or cached[0] is not current:
            tracer = current.get_tracer(*self._scope) if _records_for_us(current) else None
            cached = self._delegate = (current, tracer)
        return cached[1] or self._own

    def start_span(self, *args: Any, **kwargs: Any) -> otel_trace.Span:
        return self._target().start_span(*args, **kwargs)

    @_agnosticcontextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[otel_trace.Span]:
        with self._target().start_as_current_span(*args, **kwargs) as span:
            yield span


class _FollowingTracerProvider(otel_trace.ProxyTracerProvider, TracerProvider):
    """Our own SDK provider; its tracers follow the global provider (see above).

    It is an SDK `TracerProvider` (code that checks for one and adds its processors keeps
    working) and also passes for the API's `ProxyTracerProvider`, which libraries such as
    OpenLLMetry and Langfuse read as "no provider configured yet": they then install their
    own, as they would if this package were not loaded.
    """

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> otel_trace.Tracer:
        own = TracerProvider.get_tracer(
            self, instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        scope = (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        return _FollowingTracer(self, own, scope)


def _rearm_set_once() -> bool:
    """Let the next `set_tracer_provider` succeed (with no warning). False if impossible."""
    once = getattr(otel_trace, "_TRACER_PROVIDER_SET_ONCE", None)
    if once is None or not isinstance(getattr(once, "_done", None), bool):
        return False
    once._done = False
    return True


def get_collector() -> Collector:
    """The process's collector, attached to every SDK tracer provider on first use."""
    global _collector, _provider
    if _collector is not None:
        return _collector
    with _install_lock:
        if _collector is not None:
            return _collector
        current = otel_trace.get_tracer_provider()  # may load OTEL_PYTHON_TRACER_PROVIDER
        existing = getattr(current, "_agenta_notebook_collector", None)
        if isinstance(existing, Collector) and isinstance(current, TracerProvider):
            collector = existing  # a reloaded copy of this module: keep the one in place
        else:
            collector = Collector()
        if not any(known is collector for known in _everywhere):
            _everywhere.insert(0, collector)
        _hook_new_providers()
        for provider in _existing_providers():
            _attach(provider)
        global_provider = _global_provider()
        if isinstance(global_provider, TracerProvider):
            own: TracerProvider = global_provider
        else:
            own = _FollowingTracerProvider()  # attached by the hook
            if global_provider is None:
                otel_trace.set_tracer_provider(own)
                if _global_provider() is own:
                    _rearm_set_once()
            elif not _records_for_us(global_provider):
                warnings.warn(
                    "agenta_notebook: the global OpenTelemetry tracer provider is not the "
                    f"SDK's ({type(global_provider).__name__}), so spans made through it "
                    "are not recorded; agenta_notebook's own spans and those of every SDK "
                    "tracer provider are.",
                    stacklevel=2,
                )
        _attach(own)
        _collector, _provider = collector, own
        return collector


def get_tracer() -> otel_trace.Tracer:
    """The tracer this package's spans are made with.

    On a provider this package installed, it follows the global provider: once a
    library (Agenta's `ag.init()`, Logfire) sets its own, our spans are made there too,
    so its exporter receives the whole tree.
    """
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
