"""The one `SpanProcessor` that keeps the spans of the traces we opened, and its wiring.

The collector is added to every OpenTelemetry SDK `TracerProvider` of the process, the
ones that exist when it is installed and every one made later (the user's, Agenta's
`ag.init()`, Logfire's, an SDK's private one), so no span of a traced cell is lost
whoever made its provider; what those providers export is unchanged. When no provider is
global yet, a provider of ours is installed as the global one, so that instrumentation
libraries, which use `opentelemetry.trace.get_tracer(...)`, are recorded too; it gives
way to a provider set later (see `FollowingTracerProvider`).

This module holds no state of its own: which processors go everywhere, which providers
they are on and which provider is ours are kept by `agenta_notebook.runtime`, which
calls the functions below with them. What is process-wide by nature is marked so: the
wrapped `TracerProvider.__init__` and OpenTelemetry's global provider.
"""

from __future__ import annotations

import functools
import gc
import traceback
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import Status, StatusCode

try:  # OpenTelemetry's context manager that also decorates async functions
    from opentelemetry.util._decorator import _agnosticcontextmanager
except ImportError:  # pragma: no cover - a future API without it
    from contextlib import contextmanager as _agnosticcontextmanager  # type: ignore[assignment]

from agenta_notebook import forksafe
from agenta_notebook.core.pricing import NO_USER_PRICES, UserPrices
from agenta_notebook.core.rollup import RowSpan, SpanEvent, SpanRecord, join_record, split_record
from agenta_notebook.core.usage import AG_TYPE
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace, UserPricesSource

#: Attribute that marks the root span of a trace opened by this package.
ROOT_MARKER: Final = "agenta_notebook.root"
TRACER_NAME: Final = "agenta_notebook"
DEFAULT_MAX_TRACES: Final = 200
DEFAULT_MAX_SPANS: Final = 2_000_000

DropListener = Callable[[Trace], None]
#: Resources met by a trace's conversions, by id: the resource and its attributes as
#: the rows hold them (`rows_from_spans`).
ResourceMemo = dict[int, tuple[Any, tuple[tuple[str, Any], ...]]]


def _no_user_prices() -> UserPrices:
    return NO_USER_PRICES


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
    spans = rows_from_spans((span,))
    if not spans:
        raise ValueError("this span cannot be read (see the agenta_notebook log)")
    return join_record(*spans[0])


def records_from_spans(spans: Iterable[ReadableSpan]) -> list[SpanRecord]:
    """`record_from_span` of each span (a span that cannot be read is reported and left
    out)."""
    return [join_record(row, attributes) for row, attributes in rows_from_spans(spans)]


def rows_from_spans(
    spans: Iterable[ReadableSpan], resources: ResourceMemo | None = None
) -> list[RowSpan]:
    """Each SDK span as a row and its attributes (`rollup.RowSpan`), in one loop: a live
    trace converts the spans that ended in batches (`live.CONVERT_EVERY`), and this loop
    is most of what a span costs once it has ended.

    `resources` keeps each resource's attributes as the rows hold them, for the next
    calls: the spans of one provider share one resource, and their rows one tuple of
    its attributes, made once and let go by the garbage collector long before most rows
    are made (a row is let go only once what it holds is).
    """
    # The fast path, for the ended spans of the SDK this package is tested with: once a
    # span has ended its fields no longer change, so they are read directly instead of
    # through a dozen properties. The SDK freezes an ended span's attributes (its
    # `BoundedAttributes` refuses writes), so their inner dict is shared, not copied
    # (a span's attributes are a read-only Mapping). Running spans, and an SDK with
    # other internals, take the public API.
    converted: list[RowSpan] = []
    append = converted.append
    memo: ResourceMemo = {} if resources is None else resources
    last_resource: Any = None
    resource_items: tuple[tuple[str, Any], ...] = ()
    for span in spans:
        fields = getattr(span, "__dict__", None)
        if fields is None or fields.get("_end_time") is None:
            _append_from_public_api(span, append)
            continue
        try:
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
            if resource is not last_resource:  # one provider's spans share one
                resource_items = _resource_items(resource, memo)
                last_resource = resource
            row = (
                context.trace_id if context else 0,
                context.span_id if context else 0,
                parent.span_id if parent is not None else None,
                fields["_name"],
                fields["_start_time"] or 0,
                fields["_end_time"],
                status.status_code._name_,  # an Enum member's name, without a property
                status.description,
                _events_of(span) if fields["_events"] else (),
                fields["_kind"]._name_,
                scope.name if scope is not None else None,
                resource_items,
            )
        except (KeyError, AttributeError, TypeError):  # an SDK with other internals
            _append_from_public_api(span, append)
            continue
        append((row, plain))
    return converted


def _resource_items(resource: Any, memo: ResourceMemo) -> tuple[tuple[str, Any], ...]:
    """A resource's attributes as (key, value) pairs, the same tuple for one resource."""
    if resource is None:
        return ()
    found = memo.get(id(resource))
    if found is not None and found[0] is resource:
        return found[1]
    attributes = resource.attributes
    items = tuple(attributes.items()) if attributes else ()
    if len(memo) >= 64:  # resources are few (one a provider): a bound all the same
        memo.clear()
    memo[id(resource)] = (resource, items)
    return items


def _append_from_public_api(span: ReadableSpan, append: Callable[[RowSpan], None]) -> None:
    """Append the row of `span` read through the SDK's public API; a span that cannot be
    read is reported (once per kind of failure) and left out, never the whole batch."""
    try:
        append(split_record(_record_from_public_api(span)))
    except Exception:  # a span object of another SDK, or a broken one
        internal_error("converting a span to a record")


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


def check_bound(name: str, value: object) -> None:
    """Raise TypeError/ValueError unless `value` is None or a positive int (not a bool)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")


class Collector(SpanProcessor):
    """Keeps the spans of traces opened by `trace()` or the cell magic, by trace id.

    Retention is bounded: when more than `max_traces` traces, or more than `max_spans`
    spans in all, are kept, the oldest traces are dropped first.
    """

    def __init__(
        self,
        max_traces: int = DEFAULT_MAX_TRACES,
        max_spans: int = DEFAULT_MAX_SPANS,
        *,
        user_prices: UserPricesSource = _no_user_prices,
    ) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        #: where the traces it opens read the user's prices (the runtime's snapshot)
        self.user_prices = user_prices
        self._traces: OrderedDict[int, Trace] = OrderedDict()
        # Dropped traces that still had open spans: they get those spans when they end
        # (rollup.md rule 10, and `--save`, which waits for them), then are forgotten.
        self._draining: OrderedDict[int, Trace] = OrderedDict()
        self._lock = forksafe.new_lock()
        # The open spans of dropped traces pushed out of `_draining`, by (trace id, span
        # id): their ends still reach their trace. Held weakly: an entry lasts while its
        # trace is alive (a view, a `--save` or the user's handle) and its span open.
        self._spilled: weakref.WeakValueDictionary[tuple[int, int], Trace] = (
            weakref.WeakValueDictionary()
        )
        self._drop_listeners: list[DropListener] = []
        forksafe.register(self.after_fork)

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
            trace.span_started(context.span_id, span)
        except Exception:  # never break the user's code from inside a processor
            internal_error("the collector's on_start")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            trace = self._traces.get(context.trace_id)
            if trace is not None:
                trace.span_ended(context.span_id, span)
                if context.span_id == trace.root_span_id:
                    # A finished block may now be dropped, and may have passed the bound.
                    self._retain()
            elif self._draining:
                trace = self._draining.get(context.trace_id)
                if trace is not None:
                    trace.span_ended(context.span_id, span)
                    if not trace.running:
                        self._draining.pop(context.trace_id, None)
                elif self._spilled:
                    self._spilled_end(context.trace_id, span)
            elif self._spilled:
                self._spilled_end(context.trace_id, span)
        except Exception:  # never break the user's code from inside a processor
            internal_error("the collector's on_end")

    def shutdown(self) -> None:
        """Nothing to release: the traces stay readable after the provider shuts down."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- traces ------------------------------------------------------------------------
    def _register(self, trace_id: int, name: str, root_span_id: int) -> Trace:
        trace = Trace(
            trace_id,
            name,
            root_span_id=root_span_id,
            convert_many=functools.partial(rows_from_spans, resources={}),
            user_prices=self.user_prices,
        )
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
                if trace.root_ended:
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
            spilled: list[Trace] = []
            with self._lock:
                self._draining[trace.trace_id] = trace
                while len(self._draining) > MAX_DRAINING:
                    spilled.append(self._draining.popitem(last=False)[1])
            for old in spilled:
                self._spill(old)
        for listener in tuple(self._drop_listeners):
            try:
                listener(trace)
            except Exception:  # a view failing to close must not stop retention
                internal_error("a listener of dropped traces")

    def _spill(self, trace: Trace) -> None:
        """`trace` leaves `_draining`: its open spans are noted one by one, weakly."""
        for raw in trace.open_spans():
            span_id = raw.context.span_id
            with self._lock:
                self._spilled[(trace.trace_id, span_id)] = trace
            if getattr(raw, "end_time", None) is not None:  # it ended meanwhile
                trace.span_ended(span_id, raw)

    def _spilled_end(self, trace_id: int, span: ReadableSpan) -> None:
        with self._lock:
            trace = self._spilled.pop((trace_id, span.context.span_id), None)
        if trace is not None:
            trace.span_ended(span.context.span_id, span)

    def after_fork(self) -> None:
        """In a forked child: the parent's traces are forgotten (docs/architecture.md,
        "Fork"). Their views belong to the parent, so no drop listener is told; the
        child's spans in them are not kept, and its own traced blocks are."""
        for trace in (*self._traces.values(), *self._draining.values()):
            trace.dropped = True
        self._traces = OrderedDict()
        self._draining = OrderedDict()
        self._spilled = weakref.WeakValueDictionary()

    def get(self, trace_id: int) -> Trace | None:
        """The retained trace `trace_id`, or None."""
        return self._traces.get(trace_id)

    def find(self, trace_id: int) -> Trace | None:
        """The trace `trace_id`: retained, or dropped but still waiting for open spans."""
        trace = self._traces.get(trace_id)
        return trace if trace is not None else self._draining.get(trace_id)

    @property
    def draining(self) -> int:
        """Dropped traces still waiting for spans that have not ended."""
        return len(self._draining)

    def traces(self) -> list[Trace]:
        """Retained traces, oldest first."""
        with self._lock:
            return list(self._traces.values())

    def set_retention(self, max_traces: int | None = None, max_spans: int | None = None) -> None:
        """Set the bounds; both are checked before either is stored (a bad one changes nothing)."""
        check_bound("max_traces", max_traces)
        check_bound("max_spans", max_spans)
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

    def remove_drop_listener(self, listener: DropListener) -> None:
        """Stop calling `listener` (nothing happens if it was not added)."""
        if listener in self._drop_listeners:
            self._drop_listeners.remove(listener)

    @property
    def drop_listeners(self) -> tuple[DropListener, ...]:
        return tuple(self._drop_listeners)

    def reset(self, drop_listeners: Iterable[DropListener] = ()) -> None:
        """Back to a new collector's state: no trace (the dropped ones' listeners are
        told), default retention, and only `drop_listeners` listening from now on."""
        self.clear()
        with self._lock:
            self._draining.clear()
            self._spilled.clear()
            self.max_traces, self.max_spans = DEFAULT_MAX_TRACES, DEFAULT_MAX_SPANS
        self._drop_listeners[:] = list(drop_listeners)

    def __repr__(self) -> str:
        return (
            f"<Collector traces={len(self._traces)} max_traces={self.max_traces} "
            f"max_spans={self.max_spans} draining={len(self._draining)}>"
        )


#: On a provider: our processors added to it, or `None` once it is left alone for good.
_ATTACHED: Final = "_agenta_notebook_attached"
#: On a provider: the collector attached to it (found again by a reloaded package).
_COLLECTOR: Final = "_agenta_notebook_collector"
#: On the SDK's `TracerProvider` class: the function its wrapped `__init__` calls.
_ON_NEW_PROVIDER: Final = "_agenta_notebook_on_new_provider"

ProviderCallback = Callable[[TracerProvider], None]


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
# What was added to a provider is noted on the provider itself (`_ATTACHED`).


class _Shared(SpanProcessor):
    """A processor shared by every provider, as added to one of them.

    Shutting a provider down shuts its processors down: a library tearing down a provider
    of its own must not stop what every provider shares (the OTLP export, say). Only our
    own provider's shutdown (at exit), `home()`, reaches the shared processor.
    """

    def __init__(
        self,
        processor: SpanProcessor,
        provider: TracerProvider,
        home: Callable[[], TracerProvider | None],
    ) -> None:
        self.processor = processor
        self._provider = weakref.ref(provider)
        self._home = home

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        on_ending = getattr(self.processor, "_on_ending", None)
        if on_ending is not None:
            on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.processor.on_end(span)

    def shutdown(self) -> None:
        if self._provider() is self._home():
            self.processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)


def add_processors(
    provider: TracerProvider,
    processors: Sequence[SpanProcessor],
    home: Callable[[], TracerProvider | None],
) -> bool:
    """Add `processors` to `provider`, each once; the first (the collector) is kept first.

    The others are wrapped so that only `home()`'s shutdown reaches them (see `_Shared`).
    False, and nothing added, when `provider` was left alone for good (see
    `remove_processors`) or `processors` is empty.
    """
    if not processors:
        return False
    # (processor, what was added for it): the collector itself, others wrapped.
    attached: list[tuple[SpanProcessor, SpanProcessor]] | None
    attached = provider.__dict__.get(_ATTACHED, [])
    if attached is None:  # left alone for good
        return False
    collector = processors[0]
    for processor in processors:
        if not any(known is processor for known, _ in attached):
            added = processor if processor is collector else _Shared(processor, provider, home)
            provider.add_span_processor(added)
            attached.append((processor, added))
    provider.__dict__[_ATTACHED] = attached
    keep_first(provider, collector)
    provider.__dict__[_COLLECTOR] = collector
    return True


def remove_processors(
    provider: TracerProvider, processors: Iterable[SpanProcessor] | None, *, for_good: bool
) -> None:
    """Take `processors` (every one of ours when None) off `provider`.

    `for_good`: the provider is left alone from now on (`add_processors` adds nothing).
    """
    attached = provider.__dict__.get(_ATTACHED, [])
    if attached is None:  # left alone for good already: nothing of ours is on it
        return
    if processors is None:
        leaving = list(attached)
    else:
        chosen = list(processors)
        leaving = [pair for pair in attached if any(pair[0] is p for p in chosen)]
    provider.__dict__[_ATTACHED] = (
        None if for_good else [pair for pair in attached if pair not in leaving]
    )
    multi: Any = getattr(provider, "_active_span_processor", None)
    lock = getattr(multi, "_lock", None)
    if multi is None or lock is None or not leaving:
        return
    added = [pair[1] for pair in leaving]
    with lock:
        multi._span_processors = tuple(
            p for p in multi._span_processors if not any(p is a for a in added)
        )


def collector_on(provider: object) -> Collector | None:
    """The collector attached to `provider`, if any: a reloaded package keeps using it."""
    found = getattr(provider, _COLLECTOR, None)
    if isinstance(found, Collector) and isinstance(provider, TracerProvider):
        return found
    return None


def hook_new_providers(callback: ProviderCallback) -> None:
    """Have every SDK `TracerProvider` made from now on passed to `callback`.

    Process-wide by nature: the SDK class's `__init__` is wrapped once per process and
    never unwrapped (someone may have wrapped it again since). The wrapper looks its
    callback up on the class at each call, so a later call (a reloaded package, a new
    runtime) replaces the callback instead of wrapping a second time.
    """
    cls = TracerProvider
    setattr(cls, _ON_NEW_PROVIDER, callback)
    if getattr(cls.__init__, "_agenta_notebook_hook", False):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: TracerProvider, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        on_new = getattr(TracerProvider, _ON_NEW_PROVIDER, None)
        if on_new is not None:
            on_new(self)

    __init__._agenta_notebook_hook = True  # type: ignore[attr-defined]
    setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning a method


def existing_providers() -> list[TracerProvider]:
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


def records_for_us(provider: otel_trace.TracerProvider) -> bool:
    """True if spans started through `provider` reach an SDK provider (and so the collector)."""
    if isinstance(provider, TracerProvider):
        return True
    if isinstance(provider, otel_trace.NoOpTracerProvider | otel_trace.ProxyTracerProvider):
        return False
    try:  # a wrapper around an SDK provider (Logfire's, say)
        return any(issubclass(type(value), TracerProvider) for value in vars(provider).values())
    except TypeError:
        return False


def global_provider() -> otel_trace.TracerProvider | None:
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
        current = global_provider()
        if current is None or current is self._home:
            return self._own
        cached = self._delegate
        if cached is None or cached[0] is not current:
            tracer = current.get_tracer(*self._scope) if records_for_us(current) else None
            cached = self._delegate = (current, tracer)
        return cached[1] or self._own

    def start_span(self, *args: Any, **kwargs: Any) -> otel_trace.Span:
        return self._target().start_span(*args, **kwargs)

    @_agnosticcontextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[otel_trace.Span]:
        with self._target().start_as_current_span(*args, **kwargs) as span:
            yield span


class FollowingTracerProvider(otel_trace.ProxyTracerProvider, TracerProvider):
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


def home_provider() -> TracerProvider:
    """The SDK provider this package's own spans are made with.

    The global provider when it is an SDK one; else a new `FollowingTracerProvider`,
    made the global one if there is none yet (process-wide: OpenTelemetry's global
    provider), with the set-once guard re-armed so that a library may still set its own.
    """
    current = global_provider()
    if isinstance(current, TracerProvider):
        return current
    own = FollowingTracerProvider()
    if current is None:
        otel_trace.set_tracer_provider(own)
        if global_provider() is own:
            _rearm_set_once()
    elif not records_for_us(current):
        warnings.warn(
            "agenta_notebook: the global OpenTelemetry tracer provider is not the "
            f"SDK's ({type(current).__name__}), so spans made through it "
            "are not recorded; agenta_notebook's own spans and those of every SDK "
            "tracer provider are.",
            stacklevel=3,
        )
    return own


def _hidden(frame: Any) -> bool:
    """Whether `frame` asks to be left out of tracebacks (`__tracebackhide__`, as IPython
    and pytest read it); its locals are only looked at when its code has that name."""
    return "__tracebackhide__" in frame.f_code.co_varnames and bool(
        frame.f_locals.get("__tracebackhide__")
    )


def _stacktrace(error: BaseException) -> str:
    """`traceback.format_exception(error)` without the frames that ask to be hidden."""
    formatted = traceback.TracebackException.from_exception(error, compact=True)
    pending: list[tuple[traceback.TracebackException, BaseException]] = [(formatted, error)]
    seen: set[int] = set()
    while pending:
        summary, exception = pending.pop()
        if id(exception) in seen:
            continue
        seen.add(id(exception))
        frames = list(traceback.walk_tb(exception.__traceback__))
        if any(_hidden(frame) for frame, _ in frames):
            summary.stack = traceback.StackSummary.extract(
                ((frame, line) for frame, line in frames if not _hidden(frame)),
                lookup_lines=True,
            )
        linked_pairs: list[tuple[Any, Any]] = [
            (summary.__cause__, exception.__cause__),
            (summary.__context__, exception.__context__),
        ]
        if isinstance(exception, BaseExceptionGroup) and summary.exceptions:
            linked_pairs += zip(summary.exceptions, exception.exceptions, strict=False)
        for linked_summary, linked in linked_pairs:
            if linked_summary is not None and linked is not None:
                pending.append((linked_summary, linked))
    return "".join(formatted.format())


def fail_span(span: otel_trace.Span, error: BaseException) -> None:
    """Mark `span` as failed by `error`, the way OpenTelemetry's own helpers do.

    The exception event has the attributes of OpenTelemetry's `record_exception`, but
    its `exception.stacktrace` leaves out the frames that ask to be hidden from
    tracebacks (`__tracebackhide__`: our wrappers), so the recorded text shows the
    user's code only. (Written here rather than through `record_exception`, which would
    format the traceback a second time.)
    """
    if not span.is_recording():
        return
    try:
        stacktrace = _stacktrace(error)
    except Exception:
        internal_error("formatting an exception's stack trace")
        stacktrace = "".join(traceback.format_exception(error))
    kind = type(error)
    module = kind.__module__
    try:
        message = str(error)
    except Exception:  # the user's exception cannot say what it is: still recorded
        message = f"<{kind.__name__} whose str() failed>"
    span.add_event(
        "exception",
        {
            "exception.type": kind.__qualname__
            if not module or module == "builtins"
            else f"{module}.{kind.__qualname__}",
            "exception.message": message,
            "exception.stacktrace": stacktrace,
            "exception.escaped": "False",
        },
    )
    span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {message}"))


def root_attributes(attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attributes of a traced block's root span: marked as ours, typed workflow."""
    marked: dict[str, Any] = {AG_TYPE: "workflow", ROOT_MARKER: True}
    if attributes:
        marked.update(attributes)
    return marked
